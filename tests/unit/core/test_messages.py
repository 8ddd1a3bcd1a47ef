import pytest

from app.core.images import parse_image
from app.core.messages import (
    MAX_TOTAL,
    MAX_WARNING,
    digest_pinned,
    fit_warnings,
    fix_command,
    invalid_image,
    no_streaming_pools,
    not_streamable,
    pools_may_not_stream,
    unknown,
)
from app.core.pools import PoolFit, Streaming

DIGEST = "sha256:" + "c" * 64


@pytest.mark.parametrize(
    ("image", "names", "command"),
    [
        ("myacr.azurecr.io/web:v1", {}, "-n myacr --image web:v1"),
        ("myacr.azurecr.io/web", {}, "-n myacr --image web:latest"),
        (f"myacr.azurecr.io/web@{DIGEST}", {}, f"-n myacr --image web@{DIGEST}"),
        (f"myacr.azurecr.io/web:v1@{DIGEST}", {}, "-n myacr --image web:v1"),
        ("reg.contoso.com/a/b:1", {"reg.contoso.com": "contoso"}, "-n contoso --image a/b:1"),
        ("reg.contoso.com/a/b:1", {}, "-n <registry name of reg.contoso.com> --image a/b:1"),
        ("myacr-e3gvbnczgqbfd3hf.azurecr.io/web:v1", {}, "-n myacr --image web:v1"),
        ("myacr.azurecr.cn:443/web:v1", {}, "-n myacr --image web:v1"),
    ],
    ids=[
        "tag",
        "no-tag",
        "digest-only",
        "tag-and-digest",
        "custom-named",
        "custom-unnamed",
        "domain-name-label-hash",
        "sovereign-cloud-with-port",
    ],
)
def test_the_fix_names_registry_repository_and_what_the_user_wrote(image, names, command):
    assert fix_command(parse_image(image), names) == "az acr artifact-streaming create " + command


def test_a_digest_pinned_image_never_gets_a_tag_it_did_not_write():
    text = not_streamable("web", parse_image(f"myacr.azurecr.io/web@{DIGEST}"), "")
    assert "latest" not in text and ":v" not in text
    assert text.endswith(f"--image web@{DIGEST}")


def test_the_image_is_shown_as_written_host_included():
    ref = parse_image("127.0.0.1:25000/demo/plain:v1")
    text = not_streamable("app", ref, "", {"127.0.0.1:25000": "demoacr"})
    assert text == (
        "app: 127.0.0.1:25000/demo/plain:v1 has no streaming artifact; "
        "fix: az acr artifact-streaming create -n demoacr --image demo/plain:v1"
    )


def test_a_long_image_is_shortened_in_the_middle_and_the_fix_stays_whole():
    repo = "/".join(["team-with-a-long-name"] * 3)
    ref = parse_image(f"myacr.azurecr.io/{repo}:release-2026.12.05-build.123456")
    text = not_streamable("a-container-with-a-long-name", ref, "")
    assert len(text) <= MAX_WARNING
    assert text.endswith(f"--image {repo}:release-2026.12.05-build.123456")
    assert text.startswith("a-container-with-a-long-name: myacr.azurecr.io/")


def test_digest_pin_says_pull_by_tag_with_the_tag_when_known():
    with_tag = digest_pinned("c", parse_image(f"myacr.azurecr.io/web:v1@{DIGEST}"))
    assert with_tag.endswith("pull it by tag (web:v1)")
    assert digest_pinned("c", parse_image(f"myacr.azurecr.io/web@{DIGEST}")).endswith(
        "pull it by tag"
    )


def test_unknown_points_at_explain_with_the_image():
    ref = parse_image("myacr.azurecr.io/web:v1")
    text = unknown("c", ref, "registry timed out", denied=False)
    assert text.endswith("allowed; details: streamgate explain myacr.azurecr.io/web:v1")


def test_a_container_without_image_is_said_so_plainly():
    assert invalid_image("app", None, "image is missing") == "app: has no image"
    assert "None" not in invalid_image("app", None, "image is missing")


def test_the_pool_warning_names_the_selector_that_keeps_the_pod_on_streaming_pools():
    blocked = [PoolFit("arm", Streaming.NO, ("arm64",))]
    text = pools_may_not_stream(
        blocked,
        ("kubernetes.azure.com/artifactstreaming-enabled", "true"),
        [PoolFit("fast", Streaming.YES)],
    )
    assert text.endswith('add nodeSelector kubernetes.azure.com/artifactstreaming-enabled: "true"')
    no_selector = pools_may_not_stream(blocked, None, [PoolFit("fast", Streaming.YES)])
    assert no_selector.endswith("for the pools that stream (fast)")


def test_no_streaming_pool_gives_the_enable_command_for_a_pool_it_fits():
    text = no_streaming_pools([PoolFit("user1", Streaming.UNKNOWN, ("no streaming label",))])
    assert text.startswith("no node pool in this cluster has artifact streaming enabled")
    assert "az aks nodepool update" in text and "-n user1 --enable-artifact-streaming" in text


def test_warnings_fit_the_apiserver_total_and_say_what_was_left_out():
    texts = [f"c{i}: problem number {i} " + "x" * 150 for i in range(60)]
    kept = fit_warnings([texts[0], texts[0], *texts])
    assert kept[0] == texts[0] and kept.count(texts[0]) == 1
    assert sum(len(t) for t in kept) <= MAX_TOTAL
    assert kept[-1].startswith(f"+{60 - (len(kept) - 1)} more problems not shown")
    assert fit_warnings(texts[:3]) == texts[:3]


def test_a_grouped_unknown_with_a_digest_stays_within_the_limit():
    from app.core.messages import grouped

    ref = parse_image("127.0.0.1:25000/demo/plain@sha256:" + "0" * 64)
    one = unknown("debug:#0", ref, "image not found in registry", denied=False)
    assert len(one) <= MAX_WARNING
    rest = one[len("debug:#0") :]
    assert len(grouped(["debug:#0", "debug:#1"], rest)) <= MAX_WARNING
    many = grouped([f"container-with-a-long-name-{i}" for i in range(50)], rest)
    assert len(many) <= MAX_WARNING and many.startswith("50 containers")


def test_control_characters_are_written_as_escapes_in_warnings_and_denials():
    # The apiserver drops a warning holding a control character (Go's unicode.IsControl in
    # k8s.io/apimachinery's NewWarningHeader), and a terminal would run an escape sequence.
    from app.core.messages import denial, printable

    assert printable("a\x1b[2Jb\x7f\x85\u2028c") == "a\\x1b[2Jb\\x7f\\x85\u2028c"
    assert printable("one\ntwo\tthree", keep="\n\t") == "one\ntwo\tthree"
    kept = fit_warnings(
        ["app: evil\x1b]0;pwned\x07:v1 has no streaming artifact", "x" * 250 + "\0"]
    )
    assert kept[0] == "app: evil\\x1b]0;pwned\\x07:v1 has no streaming artifact"
    assert len(kept[1]) <= MAX_WARNING and "\0" not in kept[1]
    assert all(c.isprintable() for w in kept for c in w)
    text = denial("Pod", "p\x1bq", ["app: i\x00mage has no streaming artifact"])
    assert "\x1b" not in text and "\x00" not in text and "p\\x1bq" in text


def test_conversion_helps_only_when_running_the_command_would():
    from app.core.messages import conversion_helps

    assert conversion_helps("")
    assert conversion_helps("no streaming artifact")
    assert conversion_helps("conversion failed (UNKNOWN_ERROR)")
    assert conversion_helps("conversion canceled")
    assert not conversion_helps("no streaming artifact yet; conversion running (40%)")
    assert not conversion_helps("no streaming artifact yet; conversion queued")
    assert not conversion_helps("streaming conversion failed (X): only linux/amd64 images convert")


def test_fix_of_finds_the_fix_of_every_message_that_has_one():
    from app.core.messages import (
        digest_pinned,
        fix_command,
        fix_of,
        no_pool,
        no_streaming_pools,
        not_acr,
        not_streamable,
        pools_cannot_stream,
        pools_may_not_stream,
        pull_secrets,
        unknown,
    )

    ref = parse_image("myreg.azurecr.io/app/web:1.2")
    pinned = parse_image("myreg.azurecr.io/app/web:1.2@sha256:" + "a" * 64)
    arm = PoolFit("arm", Streaming.NO, ("arm64",))
    ok = PoolFit("ok", Streaming.YES)
    assert fix_of(not_streamable("web", ref, "")) == fix_command(ref)
    assert fix_of(not_streamable("web", ref, "conversion canceled")) == fix_command(ref)
    assert fix_of(not_streamable("web", ref, "conversion running")) is None
    assert fix_of(unknown("web", ref, "timed out", denied=False)) == (
        "streamgate explain myreg.azurecr.io/app/web:1.2"
    )
    assert fix_of(digest_pinned("web", pinned)) == "pull it by tag (app/web:1.2)"
    assert fix_of(pull_secrets()).startswith("use the kubelet identity (az aks update ")
    assert fix_of(pools_may_not_stream([arm], ("kubernetes.azure.com/agentpool", "ok"))) == (
        'add nodeSelector kubernetes.azure.com/agentpool: "ok"'
    )
    assert fix_of(pools_may_not_stream([arm], None, [ok])).startswith("add a nodeSelector")
    assert fix_of(pools_cannot_stream([arm])) == "target a streaming pool"
    assert fix_of(no_streaming_pools([PoolFit("np", Streaming.UNKNOWN)])) == (
        "az aks nodepool update -g <resource-group> --cluster-name <cluster> -n np "
        "--enable-artifact-streaming"
    )
    assert fix_of(not_acr("web", parse_image("nginx:1"))) is None
    assert fix_of(no_pool()) is None
