import pytest

from app.core.evaluate import (
    ANNOTATION_DIGEST_PINNED,
    ANNOTATION_POOLS,
    ANNOTATION_REPORT,
    ANNOTATION_STREAMING,
    Severity,
    evaluate,
    exemption,
    ignored_exemption,
)
from app.core.images import parse_image
from app.core.messages import MAX_TOTAL, MAX_WARNING, OWN_BUDGET
from app.core.plan import plan
from app.core.policy import Mode, parse_policy
from app.core.pools import UNKNOWN_PLACEMENT, Placement, PoolFit, Streaming
from app.core.verdicts import ImageVerdict, Verdict
from app.core.workloads import workload

ACR = "myreg.azurecr.io"
D = "sha256:" + "b" * 64
STREAM = ImageVerdict(Verdict.STREAMABLE, digest=D)
NOPE = ImageVerdict(Verdict.NOT_STREAMABLE)
UNKNOWN = ImageVerdict(Verdict.UNKNOWN, "registry timed out")

OK_POOL = PoolFit("streamub", Streaming.YES)
ARM_POOL = PoolFit("arm", Streaming.NO, ("arm64",))
CVM_POOL = PoolFit("cvm", Streaming.NO, ("Confidential VM",))


def deployment(*images, pull_secrets=False, annotations=None, template_annotations=None):
    spec = {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]}
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": "acr"}]
    obj = {
        "metadata": {"name": "web", "annotations": annotations or {}},
        "spec": {
            "template": {"metadata": {"annotations": template_annotations or {}}, "spec": spec}
        },
    }
    return workload("apps", "Deployment", obj)


def run(
    wl, verdicts=None, *, mode=Mode.WARN, placement=UNKNOWN_PLACEMENT, by_controller=False, **policy
):
    pol = parse_policy(policy)
    planned = plan(wl, pol)
    got = {ref: (verdicts or {}).get(ref.raw, STREAM) for ref in planned.to_check}
    return evaluate(
        planned,
        mode=mode,
        policy=pol,
        verdicts=got,
        placement=placement,
        by_controller=by_controller,
    )


def rules(decision):
    return [(p.rule, p.severity) for p in decision.problems]


def test_streamable_everywhere_is_clean():
    d = run(deployment(f"{ACR}/web:v1"), placement=Placement(True, (OK_POOL,)))
    assert d.allowed and d.problems == ()
    assert d.annotations[ANNOTATION_STREAMING] == "all"
    assert d.annotations[ANNOTATION_REPORT] == "c0=streamable"
    assert d.annotations[ANNOTATION_POOLS] == "1/1 can stream"


@pytest.mark.parametrize(
    ("mode", "allowed", "severity"),
    [
        (Mode.ENFORCE, False, Severity.DENY),
        (Mode.WARN, True, Severity.WARN),
        (Mode.AUDIT, True, Severity.RECORD),
    ],
    ids=["enforce", "warn", "audit"],
)
def test_not_streamable_by_mode(mode, allowed, severity):
    img = f"{ACR}/web:v1"
    d = run(deployment(img), {img: NOPE}, mode=mode)
    assert d.allowed is allowed
    assert rules(d) == [("notStreamable", severity)]
    assert "az acr artifact-streaming create -n myreg --image web:v1" in d.problems[0].message
    assert d.annotations[ANNOTATION_STREAMING] == "none"


def test_mode_off_skips_everything():
    img = f"{ACR}/web:v1"
    d = run(deployment(img), {img: NOPE}, mode=Mode.OFF)
    assert d.allowed and d.skipped == "mode off" and d.annotations == {}


def test_registry_reason_is_shown():
    img = f"{ACR}/web:v1"
    verdict = ImageVerdict(
        Verdict.NOT_STREAMABLE, "no streaming artifact yet; conversion running (40%)"
    )
    d = run(deployment(img), {img: verdict})
    assert d.problems[0].message == (
        "c0: myreg.azurecr.io/web:v1: no streaming artifact yet; conversion running (40%)"
    )
    bare = run(
        deployment(img), {img: ImageVerdict(Verdict.NOT_STREAMABLE, "no streaming artifact")}
    )
    assert bare.problems[0].message == (
        "c0: myreg.azurecr.io/web:v1 has no streaming artifact; "
        "fix: az acr artifact-streaming create -n myreg --image web:v1"
    )


@pytest.mark.parametrize(
    ("on_error", "mode", "allowed"),
    [("allow", Mode.ENFORCE, True), ("deny", Mode.ENFORCE, False), ("deny", Mode.WARN, True)],
    ids=["allow-enforce", "deny-enforce", "deny-warn"],
)
def test_unknown_follows_on_error(on_error, mode, allowed):
    img = f"{ACR}/web:v1"
    d = run(deployment(img), {img: UNKNOWN}, mode=mode, onError=on_error)
    assert d.allowed is allowed
    assert "registry timed out" in d.problems[0].message
    assert d.annotations[ANNOTATION_STREAMING] == "unknown"


def test_digest_pinned_warns_even_in_enforce_and_is_annotated():
    img = f"{ACR}/web@{D}"
    d = run(deployment(img, f"{ACR}/api:v2"), mode=Mode.ENFORCE)
    assert d.allowed
    assert rules(d) == [("digestPinned", Severity.WARN)]
    assert d.annotations[ANNOTATION_DIGEST_PINNED] == "c0"
    assert d.annotations[ANNOTATION_STREAMING] == "partial"  # c1 streams; pinned c0 may not
    alone = run(deployment(img))
    assert alone.annotations[ANNOTATION_STREAMING] == "unknown"
    assert "sha256:bbbbbbbbbbbb…" in d.problems[0].message


def test_not_acr_ignored_by_default_and_never_looked_up():
    wl = deployment("nginx:1", "ghcr.io/a/b:1")
    assert set(plan(wl, parse_policy({})).to_check) == set()
    d = run(wl)
    assert d.problems == ()
    assert d.annotations[ANNOTATION_REPORT] == "c0=not-acr,c1=not-acr"
    assert d.annotations[ANNOTATION_STREAMING] == "none"
    d = run(wl, rules={"notAcr": "warn"})
    assert [p.rule for p in d.problems] == ["notAcr", "notAcr"]


def test_custom_acr_registry_is_looked_up():
    wl = deployment("127.0.0.1:25000/demo/a:v1")
    assert set(plan(wl, parse_policy({"acrRegistries": ["127.0.0.1:25000"]})).to_check) == {
        parse_image("127.0.0.1:25000/demo/a:v1")
    }


def test_pull_secrets_warn_only_with_acr_images():
    assert rules(run(deployment(f"{ACR}/a:1", pull_secrets=True))) == [
        ("imagePullSecrets", Severity.WARN)
    ]
    assert rules(run(deployment("nginx", pull_secrets=True))) == []


def test_invalid_image_warns_with_reason():
    d = run(deployment("Bad:Image", f"{ACR}/a:1"), mode=Mode.ENFORCE)
    assert d.allowed
    assert rules(d) == [("invalidImage", Severity.WARN)]
    assert "lower-case" in d.problems[0].message


def test_exempt_image_pattern():
    img = f"{ACR}/base/tool:1"
    wl = deployment(img, f"{ACR}/web:v1")
    pol = {"exemptions": {"images": [f"{ACR}/base/*"]}}
    assert set(plan(wl, parse_policy(pol)).to_check) == {parse_image(f"{ACR}/web:v1")}
    d = run(wl, {img: NOPE}, mode=Mode.ENFORCE, **pol)
    assert d.allowed
    assert d.annotations[ANNOTATION_REPORT] == "c0=exempt,c1=streamable"
    all_exempt = run(deployment(img), **pol)
    assert all_exempt.skipped == "every image is exempt"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"annotations": {"streamgate.io/exempt": "legacy"}}, "exempt by annotation: legacy"),
        ({"template_annotations": {"streamgate.io/exempt": "x"}}, "exempt by annotation: x"),
    ],
    ids=["object", "template"],
)
def test_exemption_annotation(kwargs, reason):
    wl = deployment(f"{ACR}/a:1", **kwargs)
    assert exemption(wl, "default", parse_policy({}), Mode.WARN) == reason


def test_exempt_namespace():
    assert exemption(deployment("x"), "kube-system", parse_policy({}), Mode.ENFORCE) == (
        "namespace kube-system is exempt"
    )
    assert exemption(deployment("x"), "apps", parse_policy({}), Mode.WARN) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("true", "exempt by annotation"),
        ("Yes", "exempt by annotation"),
        ("1", "exempt by annotation"),
        (
            "legacy base image, ticket OPS-12",
            "exempt by annotation: legacy base image, ticket OPS-12",
        ),
        ("false", None),
        ("False", None),
        ("no", None),
        ("0", None),
        ("off", None),
        ("", None),
        ("  ", None),
    ],
    ids=repr,
)
def test_only_a_truthy_value_or_a_reason_exempts(value, reason):
    """Issue 14 item 6: `streamgate.io/exempt: "false"` exempted the workload."""
    wl = deployment(f"{ACR}/a:1", annotations={"streamgate.io/exempt": value})
    assert exemption(wl, "default", parse_policy({}), Mode.WARN) == reason


@pytest.mark.parametrize(
    ("policy", "namespace", "mode", "honoured"),
    [
        ({}, "team-a", Mode.WARN, True),
        ({}, "team-a", Mode.AUDIT, True),
        ({}, "team-a", Mode.ENFORCE, False),
        ({"allowed": False}, "team-a", Mode.WARN, False),
        ({"enforceNamespaces": ["legacy-*"]}, "legacy-billing", Mode.ENFORCE, True),
        ({"enforceNamespaces": ["legacy-*"]}, "team-a", Mode.ENFORCE, False),
        ({"allowed": False, "enforceNamespaces": ["*"]}, "team-a", Mode.ENFORCE, False),
    ],
    ids=str,
)
def test_the_exempt_annotation_is_no_free_bypass_of_enforce(policy, namespace, mode, honoured):
    """Issue 18 finding 5: the annotation on a tenant's own object skipped enforce."""
    pol = parse_policy({"exemptions": {"annotation": policy}})
    wl = deployment(f"{ACR}/a:1", template_annotations={"streamgate.io/exempt": "please"})
    assert (exemption(wl, namespace, pol, mode) is not None) is honoured
    ignored = ignored_exemption(wl, namespace, pol, mode)
    assert (ignored is None) is honoured
    if ignored is not None:
        assert ignored.startswith("streamgate.io/exempt ignored")
        assert len(ignored) <= 120


def test_a_policy_note_is_a_warning_beside_the_denial():
    img = f"{ACR}/a:1"
    pol = parse_policy({})
    planned = plan(deployment(img), pol)
    verdicts = {ref: NOPE for ref in planned.to_check}
    d = evaluate(
        planned,
        mode=Mode.ENFORCE,
        policy=pol,
        verdicts=verdicts,
        placement=UNKNOWN_PLACEMENT,
        notes=("streamgate.io/exempt ignored in enforce mode here",),
    )
    assert not d.allowed
    assert d.warnings == ["streamgate.io/exempt ignored in enforce mode here"]


def test_pools_some_cannot_stream():
    placement = Placement(True, (OK_POOL, ARM_POOL, CVM_POOL), steer_label=("k", "true"))
    d = run(deployment(f"{ACR}/a:1"), placement=placement, mode=Mode.ENFORCE)
    assert d.allowed
    assert rules(d) == [("poolsMayNotStream", Severity.WARN)]
    assert "arm (arm64), cvm (Confidential VM)" in d.problems[0].message
    assert d.annotations[ANNOTATION_STREAMING] == "partial"
    assert d.annotations[ANNOTATION_POOLS] == "1/3 can stream; not: arm,cvm"
    assert d.steer is None  # steering is opt-in
    steered = run(deployment(f"{ACR}/a:1"), placement=placement, steering={"enabled": True})
    assert steered.steer == ("k", "true")


def test_pools_none_can_stream_denies_in_enforce():
    d = run(deployment(f"{ACR}/a:1"), placement=Placement(True, (ARM_POOL,)), mode=Mode.ENFORCE)
    assert not d.allowed
    assert rules(d) == [("poolsCannotStream", Severity.DENY)]
    assert d.annotations[ANNOTATION_STREAMING] == "none"


def test_no_candidate_pool_is_a_warning_not_a_denial():
    d = run(deployment(f"{ACR}/a:1"), placement=Placement(True, ()), mode=Mode.ENFORCE)
    assert d.allowed and rules(d) == [("noPool", Severity.WARN)]


def test_pools_ignored_without_acr_images():
    d = run(deployment("nginx"), placement=Placement(True, (ARM_POOL,)), mode=Mode.ENFORCE)
    assert d.allowed and d.problems == ()


def test_controlled_pod_is_warned_not_denied_unless_policy_says():
    img = f"{ACR}/a:1"
    obj = {
        "metadata": {"name": "p", "ownerReferences": [{"kind": "ReplicaSet", "controller": True}]},
        "spec": {"containers": [{"name": "a", "image": img}]},
    }
    wl = workload("", "Pod", obj)
    assert run(wl, {img: NOPE}, mode=Mode.ENFORCE, by_controller=True).allowed
    assert not run(
        wl, {img: NOPE}, mode=Mode.ENFORCE, by_controller=True, denyControlledPods=True
    ).allowed
    bare = workload("", "Pod", {"metadata": {"name": "p"}, "spec": obj["spec"]})
    assert not run(bare, {img: NOPE}, mode=Mode.ENFORCE, by_controller=True).allowed
    # Issue 18 finding 5: anyone can write an ownerReference; only a controller's request
    # is softened.
    assert not run(wl, {img: NOPE}, mode=Mode.ENFORCE, by_controller=False).allowed


def test_missing_verdict_counts_as_unknown():
    wl = deployment(f"{ACR}/a:1")
    pol = parse_policy({})
    d = evaluate(
        plan(wl, pol), mode=Mode.WARN, policy=pol, verdicts={}, placement=UNKNOWN_PLACEMENT
    )
    assert d.reports[0].verdict.verdict is Verdict.UNKNOWN


def test_every_message_fits_the_apiserver_limit_and_keeps_its_fix_whole():
    long_image = (
        f"{ACR}/" + "/".join(["averyveryverylongrepositorysegment"] * 4) + ":v1.2.3-build.456789"
    )
    placement = Placement(
        True,
        (
            *tuple(
                PoolFit(f"pool{i:02d}withalongname", Streaming.NO, ("arm64", "Confidential VM"))
                for i in range(12)
            ),
            OK_POOL,
        ),
    )
    wl = deployment(long_image, f"{ACR}/x@{D}", "Bad!", pull_secrets=True)
    d = run(wl, {long_image: NOPE}, placement=placement, rules={"notAcr": "warn"})
    assert len(d.problems) >= 4
    for p in d.problems:
        assert len(p.message) <= MAX_WARNING, p.message
        assert "\n" not in p.message
    fix = "az acr artifact-streaming create -n myreg --image " + long_image.split("/", 1)[1]
    assert any(p.message.endswith("fix: " + fix) for p in d.problems)


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (
            "no streaming artifact",
            "c0: myreg.azurecr.io/web:v1 has no streaming artifact; "
            "fix: az acr artifact-streaming create -n myreg --image web:v1",
        ),
        (
            "conversion canceled",
            "c0: myreg.azurecr.io/web:v1: conversion canceled; "
            "retry: az acr artifact-streaming create -n myreg --image web:v1",
        ),
        (
            "conversion failed (UNKNOWN_ERROR)",
            "c0: myreg.azurecr.io/web:v1: conversion failed (UNKNOWN_ERROR); "
            "retry: az acr artifact-streaming create -n myreg --image web:v1",
        ),
        (
            "streaming conversion failed (UNSUPPORTED_PLATFORM): only linux/amd64 images convert",
            "c0: myreg.azurecr.io/web:v1: streaming conversion failed (UNSUPPORTED_PLATFORM): "
            "only linux/amd64 images convert",
        ),
    ],
    ids=["bare", "canceled", "failed-retry", "failed-no-retry"],
)
def test_fix_or_retry_only_where_it_helps(reason, message):
    img = f"{ACR}/web:v1"
    d = run(deployment(img), {img: ImageVerdict(Verdict.NOT_STREAMABLE, reason)})
    assert d.problems[0].message == message


def test_a_hundred_containers_with_one_problem_give_one_warning_and_the_pool_one_first():
    images = [f"{ACR}/same:v1"] * 98 + [f"{ACR}/other:v1", f"{ACR}/third:v1"]
    placement = Placement(True, (OK_POOL, ARM_POOL))
    d = run(deployment(*images), {f"{ACR}/same:v1": NOPE}, placement=placement)
    warnings = d.warnings
    assert warnings[0].startswith("may land on pools that can't stream: arm (arm64)")
    assert warnings[1].startswith(
        f"98 containers (c0, c1, c2, +95 more): {ACR}/same:v1 has no streaming artifact; fix: "
    )
    assert len(warnings) == 2
    assert sum(len(w) for w in warnings) <= MAX_TOTAL


def test_many_distinct_problems_stay_within_the_apiserver_total_pool_warning_kept():
    images = [f"{ACR}/image-number-{i:03d}-with-a-longer-name:v1" for i in range(100)]
    placement = Placement(True, (OK_POOL, ARM_POOL))
    d = run(deployment(*images), {im: NOPE for im in images}, placement=placement)
    warnings = d.warnings
    assert warnings[0].startswith("may land on pools that can't stream")
    # a quarter of the apiserver's 4,096 is left to other webhooks' warnings
    assert OWN_BUDGET - 300 <= sum(len(w) for w in warnings) <= OWN_BUDGET < MAX_TOTAL
    assert warnings[-1].startswith("+") and "more problems not shown" in warnings[-1]
    assert len(d.problems) == 101  # every problem is still recorded


@pytest.mark.parametrize("mode", [Mode.ENFORCE, Mode.WARN])
def test_no_pool_with_streaming_enabled_is_its_own_warning(mode):
    unknown_pool = PoolFit("user1", Streaming.UNKNOWN, ("no streaming label in cluster",))
    placement = Placement(True, (unknown_pool, ARM_POOL), streaming_enabled=False)
    d = run(deployment(f"{ACR}/web:v1"), placement=placement, mode=mode)
    assert rules(d) == [("noStreamingPools", Severity.WARN)]
    assert d.allowed
    assert "--enable-artifact-streaming" in d.warnings[0]
    denied = run(
        deployment(f"{ACR}/web:v1"),
        placement=placement,
        mode=Mode.ENFORCE,
        rules={"noStreamingPools": "deny"},
    )
    assert not denied.allowed


@pytest.mark.parametrize("verdict", [NOPE, UNKNOWN, ImageVerdict(Verdict.UNKNOWN, "x" * 200)])
def test_grouping_never_passes_the_warning_limit_whatever_the_image_length(verdict):
    # Found by the fuzz test: one container's line fits its short label, the group's longer
    # "100 containers: " did not. A group that can't fit keeps each container's own line.
    for length in range(120, 300, 7):
        image = f"streamgate-no-such-registry.invalid/demo/plain:{'x' * length}"
        image = f"{ACR}/demo:{'x' * length}" if verdict is NOPE else image
        d = run(
            deployment(*[image] * 100),
            {image: verdict},
            acrRegistries=["streamgate-no-such-registry.invalid"],
        )
        assert d.warnings, length
        assert all(len(w) <= MAX_WARNING for w in d.warnings), (length, d.warnings)
        assert sum(len(w) for w in d.warnings) <= MAX_TOTAL
