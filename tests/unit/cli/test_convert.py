"""`streamgate convert` against the in-memory registry (tests/unit/registry/test_fakes.py),
whose hook plays ACR's conversion endpoints: the lines users read, idempotency, failures with
their meaning, exit codes. The real registry and ACR front: tests/integration/test_convert.py."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from app.cli.convert import (
    FAILURE_FIXES,
    ConvertError,
    LiveDisplay,
    Summary,
    convert,
    live_line,
    plan_line,
    status_line,
    uses_from_check,
)
from app.cli.main import EXIT_USAGE, main
from app.core.conversions import (
    Blocker,
    ConversionAction,
    ConversionPlan,
    ImageUse,
    select_images,
)
from app.core.policy import parse_policy
from app.registry.conversion import (
    FAILURE_CODES,
    FAILURE_MEANINGS,
    ConversionState,
    ConversionStatus,
)
from tests.unit.registry.test_fakes import FakeRegistry, FixedAad

HOST = "reg.test"
_POST = re.compile(r"^/acr/v1/(?P<repo>.+)/_streaming/(?P<digest>[^/]+)$")
_OP = re.compile(r"^/acr/v1/(?P<repo>.+)/_operations/(?P<id>[^/]+)$")


def policy() -> Any:
    return parse_policy({"acrRegistries": [HOST], "registry": {"registries": {HOST: {}}}})


class Acr:
    """Conversions on the fake: started by POST, then running, then an end state."""

    def __init__(self, reg: FakeRegistry, *, fail: str | None = None) -> None:
        self.reg, self.fail = reg, fail
        self.polls: dict[str, int] = {}
        self.posts: list[str] = []
        reg.hook = self.handle

    async def handle(self, request: httpx.Request) -> httpx.Response | None:
        path = request.url.path
        m = _POST.match(path)
        if m and request.method == "POST":
            body = json.loads(request.content)
            assert body == {"conversionFormat": "overlaybd", "conversionVersion": "v1"}
            op = f"op{len(self.posts)}"
            self.posts.append(m["digest"])
            self.polls[op] = 0
            status = {"id": op, "status": "NotStarted"}
            self.reg.conversions[(m["repo"], m["digest"])] = status
            return httpx.Response(202, json=status)
        m = _OP.match(path)
        if m:
            self.polls[m["id"]] += 1
            if self.polls[m["id"]] == 1:
                return httpx.Response(
                    200, json={"id": m["id"], "status": "Running", "progress": 40}
                )
            if self.fail:
                return httpx.Response(
                    200, json={"id": m["id"], "status": "Failed", "errorCode": self.fail}
                )
            return httpx.Response(200, json={"id": m["id"], "status": "Succeeded"})
        return None


async def run(reg: FakeRegistry, images: list[str], **kw: Any) -> tuple[Summary, list[str]]:
    lines: list[str] = []
    kw.setdefault("interval", 0.0)
    summary = await convert(
        images, policy(), out=lines.append, transport=reg.transport(), aad=FixedAad(), env={}, **kw
    )
    return summary, lines


def test_every_failure_code_has_a_meaning_and_a_fix() -> None:
    assert set(FAILURE_MEANINGS) == FAILURE_CODES == set(FAILURE_FIXES)


def test_status_lines() -> None:
    img = "reg.test/a:v1"
    run_ = ConversionStatus(ConversionState.RUNNING, progress="42%")
    assert status_line(img, run_) == "reg.test/a:v1: running (42%)"
    failed = ConversionStatus(ConversionState.FAILED, failure_code="UNSUPPORTED_PLATFORM")
    assert status_line(img, failed) == (
        "reg.test/a:v1: failed (UNSUPPORTED_PLATFORM): only linux/amd64 images convert"
        "; push a linux/amd64 image (or an index with a linux/amd64 entry)"
    )
    assert "succeeded" in status_line(img, ConversionStatus(ConversionState.SUCCEEDED))


def test_plan_lines_say_what_was_left_alone() -> None:
    assert plan_line(ConversionPlan("a:v1", ConversionAction.START)) == "would start: a:v1"
    assert plan_line(ConversionPlan("a:v1", ConversionAction.STREAMABLE)) == (
        "a:v1: streamable already; left alone"
    )
    assert "not started again" in plan_line(ConversionPlan("a:v1", ConversionAction.FOLLOW))
    unknown = plan_line(ConversionPlan("a:v1", ConversionAction.UNKNOWN, "registry timed out"))
    assert unknown == "a:v1: can't tell whether it streams (registry timed out); nothing started"


def test_summary_line_names_only_what_happened() -> None:
    s = Summary(images=3, started=2, succeeded=1, failed=1, streamable=1)
    assert s.line() == "3 images: 2 started, 1 succeeded, 1 failed, 1 already streamable"
    assert not s.ok
    assert Summary(images=1).line() == "1 image: nothing to do"


async def test_dry_run_lists_only_what_it_would_start_and_starts_nothing() -> None:
    reg = FakeRegistry()
    acr = Acr(reg)
    reg.image("demo/plain")
    digest = reg.image("demo/streamable")
    reg.referrer("demo/streamable", digest)
    summary, lines = await run(
        reg, [f"{HOST}/demo/plain:v1", f"{HOST}/demo/streamable:v1"], dry_run=True
    )
    assert lines == [
        f"would start: {HOST}/demo/plain:v1",
        f"{HOST}/demo/streamable:v1: streamable already; left alone",
    ]
    assert acr.posts == []
    assert summary.ok and summary.would_start == 1


async def test_convert_starts_follows_and_reports_each_change() -> None:
    reg = FakeRegistry()
    acr = Acr(reg)
    digest = reg.image("demo/plain")
    summary, lines = await run(reg, [f"{HOST}/demo/plain:v1"])
    assert acr.posts == [digest]
    assert lines == [
        f"{HOST}/demo/plain:v1: conversion started (operation op0)",
        f"{HOST}/demo/plain:v1: running (40%)",
        f"{HOST}/demo/plain:v1: succeeded: the streaming artifact is in place",
    ]
    assert summary.ok and summary.started == 1 and summary.succeeded == 1


async def test_a_running_conversion_is_followed_not_started_again() -> None:
    reg = FakeRegistry()
    acr = Acr(reg)
    digest = reg.image("demo/plain")
    reg.conversions[("demo/plain", digest)] = {"id": "op9", "status": "Running", "progress": 10}
    acr.polls["op9"] = 0
    summary, lines = await run(reg, [f"{HOST}/demo/plain:v1"])
    assert acr.posts == []
    assert lines[0] == f"{HOST}/demo/plain:v1: a conversion is already under way; not started again"
    assert lines[-1].endswith("succeeded: the streaming artifact is in place")
    assert summary.under_way == 1 and summary.ok


async def test_failure_is_reported_with_code_and_meaning_and_exit_is_not_ok() -> None:
    reg = FakeRegistry()
    Acr(reg, fail="IMAGE_NOT_RUNNABLE")
    reg.image("demo/tool")
    summary, lines = await run(reg, [f"{HOST}/demo/tool:v1"])
    assert lines[-1] == (
        f"{HOST}/demo/tool:v1: failed (IMAGE_NOT_RUNNABLE): "
        "the image is not runnable; only runnable linux/amd64 images convert"
        "; rebuild it as a runnable linux/amd64 image"
    )
    assert not summary.ok and summary.failures == [f"{HOST}/demo/tool:v1"]


async def test_no_wait_only_starts() -> None:
    reg = FakeRegistry()
    acr = Acr(reg)
    reg.image("demo/plain")
    summary, lines = await run(reg, [f"{HOST}/demo/plain:v1"], wait=False)
    assert len(lines) == 1 and acr.polls == {"op0": 0}
    assert summary.ok and summary.unfinished == 1


async def test_a_refused_write_says_what_to_grant() -> None:
    reg = FakeRegistry()

    async def refuse(request: httpx.Request) -> httpx.Response | None:
        return httpx.Response(403) if request.method == "POST" else None

    reg.hook = refuse
    reg.image("demo/plain")
    summary, lines = await run(reg, [f"{HOST}/demo/plain:v1"])
    assert lines == [
        f"{HOST}/demo/plain:v1: failed: registry denied access: starting a conversion needs "
        "push rights on the repository (docs/remediation.md)"
    ]
    assert not summary.ok


async def test_bad_input_is_refused_before_anything_is_asked() -> None:
    reg = FakeRegistry()
    with pytest.raises(ConvertError, match="not an image reference"):
        await run(reg, ["Not An Image!"])
    with pytest.raises(ConvertError, match="--timeout"):
        await run(reg, [f"{HOST}/a:v1"], follow_seconds=0)
    assert reg.calls == []


def test_cli_bad_image_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "UPPER CASE"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("streamgate convert: 'UPPER CASE' is not an image reference")


# ---- --from-check, --auto-convert-repos, the live display ------------------------------------

_REPO = re.compile(r"^/acr/v1/(?P<repo>.+)/_streaming$")


class RepoSettings:
    """The fake's `GET/POST /acr/v1/<repo>/_streaming`, as azure-cli reads and sets it."""

    def __init__(self, reg: FakeRegistry, *, on: set[str] = frozenset(), refuse: bool = False):
        self.on, self.refuse = set(on), refuse
        self.posts: list[tuple[str, Any]] = []
        inner = reg.hook

        async def hook(request: httpx.Request) -> httpx.Response | None:
            m = _REPO.match(request.url.path)
            if m is None:
                return await inner(request) if inner else None
            repo = m["repo"]
            if request.method == "POST":
                if self.refuse:
                    return httpx.Response(403)
                body = json.loads(request.content)
                self.posts.append((repo, body))
                if body["convertPushedImages"]:
                    self.on.add(repo)
                return httpx.Response(
                    200, json={"convertPushedImages": repo in self.on, "status": "Succeeded"}
                )
            return httpx.Response(200, json={"convertPushedImages": repo in self.on})

        reg.hook = hook


def test_check_json_gives_each_container_image_with_its_blockers() -> None:
    doc = [
        {
            "namespace": "shop",
            "kind": "Deployment",
            "name": "web",
            "problems": [{"rule": "poolsCannotStream", "severity": "warn", "message": "…"}],
            "images": [
                {"image": "r/a:1", "verdict": "not-streamable", "reason": "", "digestPinned": False}
            ],
        },
        {
            "namespace": "shop",
            "kind": "Pod",
            "name": "p",
            "problems": [],
            "images": [
                {"image": "r/b@sha256:" + "c" * 64, "verdict": "streamable", "digestPinned": True}
            ],
        },
        {"namespace": "x", "kind": "ConfigMap", "name": "c", "outcome": "skipped"},
    ]
    assert uses_from_check(json.dumps(doc)) == [
        ImageUse("r/a:1", "not-streamable", "shop/Deployment/web", "", (Blocker.POOLS,)),
        ImageUse("r/b@sha256:" + "c" * 64, "streamable", "shop/Pod/p", "", (Blocker.DIGEST,)),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "not JSON"),
        ("{", "not JSON"),
        ('{"a": 1}', "a list of workloads"),
        ("[1]", "entry 1 is not a workload object"),
        ('[{"images": {}}]', "must be lists"),
        ('[{"images": [{"verdict": "x"}]}]', "lacks 'image'"),
        ('[{"images": [{"image": "", "verdict": "x"}]}]', "lacks 'image'"),
        ('[{"images": ["r/a:1"]}]', "not an object"),
    ],
)
def test_anything_else_than_check_json_is_refused_in_one_line(text: str, says: str) -> None:
    with pytest.raises(ConvertError, match=re.escape(says)):
        uses_from_check(text)


async def test_skipped_images_are_said_and_counted_and_nothing_is_asked() -> None:
    reg = FakeRegistry()
    sel = select_images(
        [ImageUse(f"{HOST}/a:1", "not-streamable", "n/Pod/p", "", (Blocker.DIGEST,))]
    )
    summary, lines = await run(reg, [], selection=sel)
    assert lines == [f"{HOST}/a:1: skipped: {sel.skipped[0].why}"]
    assert summary.line() == "1 image: 1 skipped" and summary.ok
    assert reg.calls == []


async def test_auto_convert_repos_turns_on_only_what_is_off_and_dry_run_changes_nothing() -> None:
    reg = FakeRegistry()
    Acr(reg)
    settings = RepoSettings(reg, on={"demo/on"})
    digest = reg.image("demo/on")
    reg.referrer("demo/on", digest)
    reg.image("demo/off")
    images = [f"{HOST}/demo/on:v1", f"{HOST}/demo/off:v1"]

    summary, lines = await run(reg, images, dry_run=True, auto_repos=True)
    assert lines[:2] == [
        f"{HOST}/demo/on: auto-conversion of pushed images is on already; left alone",
        f"would turn on auto-conversion of pushed images: {HOST}/demo/off",
    ]
    assert settings.posts == []
    assert summary.line(dry_run=True) == (
        "2 images: 1 to start, 1 already streamable; auto-conversion of pushed images: "
        "1 to turn on, 1 already on"
    )

    summary, lines = await run(reg, images, auto_repos=True)
    assert f"{HOST}/demo/off: auto-conversion of pushed images turned on (new pushes convert)" in (
        lines
    )
    assert settings.posts == [
        (
            "demo/off",
            {
                "convertPushedImages": True,
                "conversionFormat": "overlaybd",
                "conversionVersion": "v1",
            },
        )
    ]
    assert summary.ok and (summary.repos_on, summary.repos_already) == (1, 1)


async def test_a_refused_setting_is_an_auth_failure() -> None:
    reg = FakeRegistry()
    RepoSettings(reg, refuse=True)
    digest = reg.image("demo/s")
    reg.referrer("demo/s", digest)
    summary, lines = await run(reg, [f"{HOST}/demo/s:v1"], auto_repos=True)
    assert lines[0] == (
        f"{HOST}/demo/s: auto-conversion not changed: registry denied access: turning it on "
        "needs push rights on the repository (docs/remediation.md)"
    )
    assert summary.auth and not summary.ok


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_live_display_redraws_its_lines_in_place_and_keeps_the_final_ones() -> None:
    import io

    out, clock = io.StringIO(), Clock()
    live = LiveDisplay(out, clock=clock, width=200)
    live.line("a:1: conversion started")
    live.state("a:1", ConversionStatus(ConversionState.NOT_STARTED))
    clock.now += 3
    live.state("a:1", ConversionStatus(ConversionState.RUNNING, progress="42%"))
    clock.now += 62
    live.tick()
    live.state("a:1", ConversionStatus(ConversionState.SUCCEEDED))
    text = out.getvalue()
    assert text == (
        "a:1: conversion started\n"
        "a:1: queued, 0:00 elapsed\n"
        "\x1b[1F\x1b[J"
        "a:1: running 42%, 0:03 elapsed\n"
        "\x1b[1F\x1b[J"
        "a:1: running 42%, 1:05 elapsed\n"
        "\x1b[1F\x1b[J"
        "a:1: succeeded: the streaming artifact is in place\n"
    )
    assert live_line("b:1", ConversionStatus(ConversionState.RUNNING), 7) == (
        "b:1: running, 0:07 elapsed"
    )


def test_ctrl_c_while_waiting_on_a_registry_exits_130_without_a_traceback(tmp_path) -> None:
    """A registry that accepts the connection and never answers; Ctrl-C (SIGINT) once the
    command is connected to it."""
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        host = f"127.0.0.1:{server.getsockname()[1]}"
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            json.dumps({"acrRegistries": [host], "registry": {"registries": {host: {}}}})
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "convert", "--policy", str(policy), f"{host}/a:v1"],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        server.settimeout(60)
        conn, _ = server.accept()  # it is waiting for the registry now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        conn.close()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
