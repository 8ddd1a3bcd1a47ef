"""`streamgate convert` against a real registry (olareg, with the referrers API) behind the ACR
front, whose /acr/v1 conversion endpoints push a real streaming referrer when a conversion
succeeds (tests/support/acr_front.py). The ordinary look-up is the judge: what it calls
not-streamable is exactly what `--dry-run` lists; after `convert` it calls them streamable;
a second run starts nothing; a repository the front can't convert fails with its code."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import secrets
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.cli.convert import Summary, convert
from app.core.images import parse_image
from app.core.policy import Policy, parse_policy
from app.core.verdicts import Verdict
from app.registry.source import RegistryVerdictSource
from tests.support.registries import AcrFront, SeedResult, run_seeder

pytestmark = pytest.mark.registry
ROOT = Path(__file__).resolve().parents[2]


class StaticAad:
    def __init__(self, token: str) -> None:
        self.token = token

    async def get_token(self, scope: str) -> tuple[str, float]:
        return self.token, time.time() + 3600


def policy_for(front: AcrFront) -> Policy:
    settings = {"acr": True, "auth": "acr-aad", "ca_file": front.ca_cert}
    return parse_policy(
        {"acrRegistries": [front.host], "registry": {"registries": {front.host: settings}}}
    )


def seed(front: AcrFront, namespace: str) -> list[str]:
    """A fresh namespace (conversions leave referrers behind): its images, as users write them."""
    result: SeedResult = run_seeder(front.seeder_args(), "seed", "--namespace", namespace)
    return sorted(f"{front.host}/{ref}" for ref in result.images)


def source_for(front: AcrFront, pol: Policy) -> RegistryVerdictSource:
    """The webhook's registry client for `pol`, with an AAD token the front accepts."""
    return RegistryVerdictSource(
        pol.registry,
        aad=StaticAad(front.mint_aad_token()),
        acr_hosts=pol.is_acr,
        aad_hosts=pol.may_get_aad,
    )


async def verdicts(front: AcrFront, images: list[str]) -> dict[str, Verdict]:
    source = source_for(front, policy_for(front))
    try:
        return {i: (await source.verdict(parse_image(i))).verdict for i in images}
    finally:
        await source.aclose()


async def run(front: AcrFront, images: list[str], **kw: Any) -> tuple[Summary, list[str]]:
    lines: list[str] = []
    kw.setdefault("interval", 0.05)
    summary = await convert(
        images, policy_for(front), out=lines.append, aad=StaticAad(front.mint_aad_token()), **kw
    )
    return summary, lines


async def test_convert_makes_the_not_streamable_images_stream_and_is_idempotent(
    acr_front_referrers: AcrFront,
) -> None:
    front = acr_front_referrers
    images = seed(front, f"convert-{secrets.token_hex(4)}")
    before = await verdicts(front, images)
    missing = [i for i in images if before[i] is Verdict.NOT_STREAMABLE]
    assert missing and len(missing) < len(images)  # the seed has both kinds

    front.reset_stats()
    summary, lines = await run(front, images, dry_run=True)
    assert [ln for ln in lines if ln.startswith("would start: ")] == [
        f"would start: {i}" for i in missing
    ]
    assert summary.would_start == len(missing)
    assert front.stats()["events"].get("conversion_started", 0) == 0

    summary, lines = await run(front, images)
    assert summary.ok, lines
    assert (summary.started, summary.succeeded) == (len(missing), len(missing))
    for image in missing:
        mine = [ln for ln in lines if ln.startswith(f"{image}: ")]
        assert mine[0].startswith(f"{image}: conversion started (operation ")
        assert mine[-1] == f"{image}: succeeded: the streaming artifact is in place"
    assert front.stats()["events"]["conversion_started"] == len(missing)

    after = await verdicts(front, images)
    assert {i: after[i] for i in missing} == {i: Verdict.STREAMABLE for i in missing}

    front.reset_stats()
    summary, lines = await run(front, images)
    assert summary.started == 0 and summary.ok
    assert lines == [f"{i}: streamable already; left alone" for i in images]
    assert front.stats()["events"].get("conversion_started", 0) == 0


async def test_a_conversion_the_registry_refuses_fails_with_its_code(
    acr_front_referrers: AcrFront,
) -> None:
    front = acr_front_referrers
    namespace = f"convert-unsupported-{secrets.token_hex(4)}"
    seed(front, namespace)
    image = f"{front.host}/{namespace}/plain:v1"
    summary, lines = await run(front, [image])
    assert not summary.ok and summary.failures == [image]
    assert lines[-1] == (
        f"{image}: failed (UNSUPPORTED_PLATFORM): only linux/amd64 images convert"
        "; push a linux/amd64 image (or an index with a linux/amd64 entry)"
    )
    # the ordinary look-up now reads the failed conversion from ACR's record of it
    pol = policy_for(front)
    source = RegistryVerdictSource(
        pol.registry,
        aad=StaticAad(front.mint_aad_token()),
        acr_hosts=pol.is_acr,
        aad_hosts=pol.may_get_aad,
    )
    try:
        verdict = await source.verdict(parse_image(image))
    finally:
        await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert "UNSUPPORTED_PLATFORM" in verdict.reason


async def test_without_push_rights_nothing_starts_and_it_says_why(
    acr_front_referrers: AcrFront,
) -> None:
    front = acr_front_referrers
    namespace = f"convert-{secrets.token_hex(4)}"
    seed(front, namespace)
    image = f"{front.host}/{namespace}/plain:v1"
    with front.configured(grant_actions=["pull"]):
        summary, lines = await run(front, [image])
    assert lines == [
        f"{image}: failed: registry denied access: starting a conversion needs push rights "
        "on the repository (docs/remediation.md)"
    ]
    assert not summary.ok


def cli(
    front: AcrFront,
    tmp_path: Path,
    *args: str,
    stdin: str | None = None,
    tty: bool = False,
    keep_policy: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`python -m app <args>` with a policy that reaches the front as `docker login` would:
    the null user and an ACR refresh token from the front's /oauth2/exchange. `stdin`: its
    standard input; `tty`: its standard output a pseudo-terminal (what it wrote there comes
    back as stdout); `keep_policy`: the policy file a test changed stays."""
    settings = {
        "acr": True,
        "auth": "basic",
        "username_env": "SG_TEST_USER",
        "password_env": "SG_TEST_PASSWORD",
        "ca_file": front.ca_cert,
    }
    policy = tmp_path / "policy.yaml"
    if not keep_policy:
        policy.write_text(
            yaml.safe_dump(
                {"acrRegistries": [front.host], "registry": {"registries": {front.host: settings}}}
            )
        )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SG_TEST_USER": "00000000-0000-0000-0000-000000000000",
        "SG_TEST_PASSWORD": front.refresh_token(),
    }
    argv = [sys.executable, "-m", "app", args[0], "--policy", str(policy), *args[1:]]
    if tty:
        return on_a_terminal(argv, env)
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=300, check=False, env=env
    )


def on_a_terminal(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run with standard output on a pseudo-terminal (pty), as a person at a terminal would."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=300)
    return subprocess.CompletedProcess(argv, code, b"".join(chunks).decode(), err)


def test_the_command_exit_codes_and_a_following_explain(
    acr_front_referrers: AcrFront, tmp_path: Path
) -> None:
    front = acr_front_referrers
    ns = f"convert-{secrets.token_hex(4)}"
    bad_ns = f"convert-unsupported-{secrets.token_hex(4)}"
    seed(front, ns)
    seed(front, bad_ns)
    plain, streamable = f"{front.host}/{ns}/plain:v1", f"{front.host}/{ns}/streamable:v1"
    unsupported = f"{front.host}/{bad_ns}/plain:v1"

    dry = cli(front, tmp_path, "convert", "--dry-run", plain, streamable)
    assert (dry.returncode, dry.stderr) == (0, "")
    assert dry.stdout.splitlines() == [
        f"would start: {plain}",
        f"{streamable}: streamable already; left alone",
        "2 images: 1 to start, 1 already streamable",
    ]

    done = cli(front, tmp_path, "convert", plain, streamable)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert done.stdout.splitlines()[-1] == (
        "2 images: 1 started, 1 succeeded, 1 already streamable"
    )
    explained = cli(front, tmp_path, "explain", plain, "-o", "json")
    assert explained.returncode == 0, explained.stderr
    assert json.loads(explained.stdout)["verdict"] == "streamable"

    again = cli(front, tmp_path, "convert", plain)
    assert again.returncode == 0
    assert again.stdout.splitlines() == [
        f"{plain}: streamable already; left alone",
        "1 image: 1 already streamable",
    ]

    failed = cli(front, tmp_path, "convert", unsupported)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stdout.splitlines()[-2:] == [
        f"{unsupported}: failed (UNSUPPORTED_PLATFORM): only linux/amd64 images convert"
        "; push a linux/amd64 image (or an index with a linux/amd64 entry)",
        "1 image: 1 started, 1 failed",
    ]


# ---- --from-check, --auto-convert-repos, exit codes, the terminal display ---------------------


def deployment(name: str, image: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def test_from_check_converts_what_check_calls_not_streamable_and_skips_digest_pins(
    acr_front_referrers: AcrFront, tmp_path: Path
) -> None:
    front = acr_front_referrers
    ns = f"convert-check-{secrets.token_hex(4)}"
    result = run_seeder(front.seeder_args(), "seed", "--namespace", ns)
    plain, streamable = f"{front.host}/{ns}/plain:v1", f"{front.host}/{ns}/streamable:v1"
    pinned = f"{front.host}/{ns}/other-referrer@{result.digest(f'{ns}/other-referrer:v1')}"
    manifest = tmp_path / "app.yaml"
    manifest.write_text(
        yaml.safe_dump_all(
            [deployment("web", plain), deployment("api", streamable), deployment("job", pinned)]
        )
    )
    checked = cli(front, tmp_path, "check", "-f", str(manifest), "-o", "json")
    assert checked.returncode in (0, 1), checked.stderr  # 1: the policy denies something
    report = tmp_path / "check.json"
    report.write_text(checked.stdout)
    by_image = {i["image"]: i["verdict"] for w in json.loads(checked.stdout) for i in w["images"]}
    assert by_image == {plain: "not-streamable", streamable: "streamable", pinned: "not-streamable"}

    front.reset_stats()
    dry = cli(front, tmp_path, "convert", "--dry-run", "--from-check", str(report))
    assert (dry.returncode, dry.stderr) == (0, "")
    assert dry.stdout.splitlines() == [
        f"{pinned}: skipped: a conversion alone would not make it stream in shop/Deployment/job: "
        "pulled by digest (AKS streams tag pulls only; pull it by tag first)",
        f"would start: {plain}",
        "2 images: 1 to start, 1 skipped",
    ]
    assert front.stats()["events"].get("conversion_started", 0) == 0

    # from standard input, as `check -o json | streamgate convert --from-check -`
    done = cli(front, tmp_path, "convert", "--from-check", "-", stdin=checked.stdout)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert done.stdout.splitlines()[-1] == "2 images: 1 started, 1 succeeded, 1 skipped"
    assert front.stats()["events"]["conversion_started"] == 1

    again = cli(front, tmp_path, "check", "-f", str(manifest), "-o", "json")
    after = {i["image"]: i["verdict"] for w in json.loads(again.stdout) for i in w["images"]}
    assert after[plain] == "streamable"

    # idempotent: the same report again starts nothing; the converted image is left alone
    front.reset_stats()
    second = cli(front, tmp_path, "convert", "--from-check", str(report))
    assert second.returncode == 0, second.stdout
    assert f"{plain}: streamable already; left alone" in second.stdout.splitlines()
    assert second.stdout.splitlines()[-1] == "2 images: 1 already streamable, 1 skipped"
    assert front.stats()["events"].get("conversion_started", 0) == 0


def repo_setting(front: AcrFront, repo: str) -> bool:
    token = front.refresh_token()
    with httpx.Client(verify=ssl.create_default_context(cafile=front.ca_cert)) as http:
        access = http.post(
            f"{front.url}/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "service": front.host,
                "scope": f"repository:{repo}:pull",
                "refresh_token": token,
            },
        ).json()["access_token"]
        answer = http.get(
            f"{front.url}/acr/v1/{repo}/_streaming", headers={"Authorization": f"Bearer {access}"}
        )
    answer.raise_for_status()
    value = answer.json()["convertPushedImages"]
    assert isinstance(value, bool)
    return value


def test_auto_convert_repos_dry_run_on_and_already_on(
    acr_front_referrers: AcrFront, tmp_path: Path
) -> None:
    front = acr_front_referrers
    ns = f"convert-auto-{secrets.token_hex(4)}"
    seed(front, ns)
    streamable = f"{front.host}/{ns}/streamable:v1"
    repo = f"{ns}/streamable"
    assert repo_setting(front, repo) is False

    front.reset_stats()
    dry = cli(front, tmp_path, "convert", "--dry-run", "--auto-convert-repos", streamable)
    assert (dry.returncode, dry.stderr) == (0, "")
    assert dry.stdout.splitlines() == [
        f"would turn on auto-conversion of pushed images: {front.host}/{repo}",
        f"{streamable}: streamable already; left alone",
        "1 image: 1 already streamable; auto-conversion of pushed images: 1 to turn on",
    ]
    assert repo_setting(front, repo) is False
    assert front.count("POST", f"/acr/v1/{repo}/_streaming") == 0

    on = cli(front, tmp_path, "convert", "--auto-convert-repos", streamable)
    assert (on.returncode, on.stderr) == (0, ""), on.stdout
    assert on.stdout.splitlines()[0] == (
        f"{front.host}/{repo}: auto-conversion of pushed images turned on (new pushes convert)"
    )
    assert repo_setting(front, repo) is True
    assert front.count("POST", f"/acr/v1/{repo}/_streaming") == 1

    front.reset_stats()
    already = cli(front, tmp_path, "convert", "--auto-convert-repos", streamable)
    assert already.returncode == 0
    assert already.stdout.splitlines() == [
        f"{front.host}/{repo}: auto-conversion of pushed images is on already; left alone",
        f"{streamable}: streamable already; left alone",
        "1 image: 1 already streamable; auto-conversion of pushed images: 1 already on",
    ]
    assert front.count("POST", f"/acr/v1/{repo}/_streaming") == 0


def test_without_push_rights_the_setting_is_refused_and_exit_is_4(
    acr_front_referrers: AcrFront, tmp_path: Path
) -> None:
    front = acr_front_referrers
    ns = f"convert-auto-{secrets.token_hex(4)}"
    seed(front, ns)
    plain = f"{front.host}/{ns}/plain:v1"
    with front.configured(grant_actions=["pull"]):
        refused = cli(front, tmp_path, "convert", "--auto-convert-repos", plain)
    assert (refused.returncode, refused.stderr) == (4, "")
    assert refused.stdout.splitlines() == [
        f"{front.host}/{ns}/plain: auto-conversion not changed: registry denied access: turning "
        "it on needs push rights on the repository (docs/remediation.md)",
        f"{plain}: failed: registry denied access: starting a conversion needs push rights on "
        "the repository (docs/remediation.md)",
        "1 image: 1 failed; auto-conversion of pushed images: 1 failed",
    ]
    assert repo_setting(front, f"{ns}/plain") is False


def test_image_not_runnable_is_reported_with_its_meaning(
    acr_front_referrers: AcrFront, tmp_path: Path
) -> None:
    front = acr_front_referrers
    ns = f"convert-notrunnable-{secrets.token_hex(4)}"
    seed(front, ns)
    image = f"{front.host}/{ns}/plain:v1"
    failed = cli(front, tmp_path, "convert", image)
    assert (failed.returncode, failed.stderr) == (1, "")
    assert failed.stdout.splitlines()[-2:] == [
        f"{image}: failed (IMAGE_NOT_RUNNABLE): the image is not runnable; only runnable "
        "linux/amd64 images convert; rebuild it as a runnable linux/amd64 image",
        "1 image: 1 started, 1 failed",
    ]


def test_unknown_and_unreachable_registries_get_one_line_each(
    acr_front_referrers: AcrFront, tmp_path: Path
) -> None:
    front = acr_front_referrers
    elsewhere = "registry.example.test/team/app:v1"  # not an ACR registry of the policy
    out = cli(front, tmp_path, "convert", elsewhere)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == [
        f"{elsewhere}: not an ACR image (only ACR converts); left alone",
        "1 image: 1 not in ACR",
    ]
    # an ACR registry nothing listens on: the look-up fails; nothing is started blindly
    down = f"{front.host.split(':')[0]}:9/team/app:v1"
    policy = yaml.safe_load((tmp_path / "policy.yaml").read_text())
    policy["acrRegistries"].append(down.split("/", maxsplit=1)[0])
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    unreachable = cli(front, tmp_path, "convert", down, keep_policy=True)
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    lines = unreachable.stdout.splitlines()
    assert lines[0].startswith(f"{down}: can't tell whether it streams (") and lines[0].endswith(
        "); nothing started"
    )
    assert lines[1] == "1 image: 1 failed"


def screen(text: str) -> list[str]:
    """What a terminal shows at the end: the lines written, less those a redraw erased (the
    display only ever moves up N whole lines and clears below: ESC[NF ESC[J)."""
    lines: list[str] = []
    for part in re.split(r"(\x1b\[\d+F\x1b\[J)", text.replace("\r\n", "\n")):
        m = re.fullmatch(r"\x1b\[(\d+)F\x1b\[J", part)
        if m:
            del lines[len(lines) - int(m[1]) :]
        else:
            assert "\x1b" not in part, part
            lines += part.split("\n")[:-1] if part.endswith("\n") else part.split("\n")
    return lines


def test_on_a_terminal_each_conversion_is_one_line_redrawn_in_place(
    acr_front_referrers: AcrFront, tmp_path: Path
) -> None:
    front = acr_front_referrers
    ns = f"convert-tty-{secrets.token_hex(4)}"
    seed(front, ns)
    plain = f"{front.host}/{ns}/plain:v1"
    text = cli(front, tmp_path, "convert", plain, tty=True).stdout
    # the live line: state, percentage, elapsed time; then redrawn (cursor up, clear) in place
    assert f"{plain}: running 50%, 0:0" in text
    assert "\x1b[1F\x1b[J" in text
    final = screen(text)
    assert final == [
        f"{plain}: conversion started" + final[0].removeprefix(f"{plain}: conversion started"),
        f"{plain}: succeeded: the streaming artifact is in place",
        "1 image: 1 started, 1 succeeded",
    ]
    assert final[0].startswith(f"{plain}: conversion started (operation ")

    # not a terminal: one plain line per change of state, no escape sequences
    ns2 = f"convert-tty-{secrets.token_hex(4)}"
    seed(front, ns2)
    plain2 = f"{front.host}/{ns2}/plain:v1"
    piped = cli(front, tmp_path, "convert", plain2).stdout
    assert "\x1b" not in piped
    assert piped.splitlines()[1:] == [
        f"{plain2}: running (50%)",
        f"{plain2}: succeeded: the streaming artifact is in place",
        "1 image: 1 started, 1 succeeded",
    ]


async def test_auto_conversion_turned_on_converts_what_is_pushed_next(
    acr_front_referrers: AcrFront, tmp_path: Path
) -> None:
    """Turned on before the repository has an image: the look-up can't find the image (exit
    1, nothing started), but the setting is on, and the next push converts by itself."""
    front = acr_front_referrers
    ns = f"convert-autopush-{secrets.token_hex(4)}"
    plain = f"{front.host}/{ns}/plain:v1"
    early = cli(front, tmp_path, "convert", "--auto-convert-repos", plain)
    assert (early.returncode, early.stderr) == (1, ""), early.stdout
    lines = early.stdout.splitlines()
    assert lines[0] == (
        f"{front.host}/{ns}/plain: auto-conversion of pushed images turned on (new pushes convert)"
    )
    assert lines[1].startswith(f"{plain}: can't tell whether it streams (")
    front.reset_stats()
    seed(front, ns)  # pushes ns/plain:v1 (and other repositories, where it is off)
    assert front.stats()["events"]["conversion_auto_started"] == 1
    for _ in range(300):  # the front's conversion runs on by itself: wait for its referrer
        if (await verdicts(front, [plain]))[plain] is Verdict.STREAMABLE:
            break
        await asyncio.sleep(0.1)
    assert (await verdicts(front, [plain]))[plain] is Verdict.STREAMABLE
    again = cli(front, tmp_path, "convert", plain)
    assert again.stdout.splitlines() == [
        f"{plain}: streamable already; left alone",
        "1 image: 1 already streamable",
    ]
