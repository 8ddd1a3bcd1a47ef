"""`streamgate convert IMAGE...`: ask ACR to convert the images that can't stream yet, and
follow each conversion to its end (docs/remediation.md).

For each image: the ordinary look-up (tag -> digest -> referrers -> last conversion), then the
pure decision of `app.core.conversions`: start, follow one already under way, or leave alone
(streamable, not ACR, or unknown). Starting is `POST /acr/v1/<repo>/_streaming/<digest>`
(app/registry/convert.py); following polls the operation and prints one line per change of
state. It never tags, re-tags or deletes anything.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

from app.core.conversions import (
    Blocker,
    ConversionAction,
    ConversionPlan,
    ImageUse,
    Selection,
    plan_conversion,
    unique_images,
)
from app.core.images import ImageRef, InvalidImageRef, parse_image
from app.core.messages import printable
from app.core.policy import Policy
from app.core.verdicts import Verdict
from app.registry.conversion import ConversionState, ConversionStatus, failure_meaning
from app.registry.convert import (
    auto_conversion,
    enable_auto_conversion,
    last_operation,
    operation_status,
    start_conversion,
)
from app.registry.credentials import AadTokenProvider
from app.registry.errors import RegistryAuthError, RegistryError
from app.registry.lookup import Lookup
from app.registry.messages import verdict_for, verdict_for_error
from app.registry.pool import ClientPool
from app.registry.transport import RegistryTransport

Line = Callable[[str], None]
_UNDER_WAY = (ConversionState.NOT_STARTED, ConversionState.RUNNING)
_ENDED = (ConversionState.SUCCEEDED, ConversionState.FAILED, ConversionState.CANCELED)
MAX_POLL_ERRORS = 3


class ConvertError(ValueError):
    """Bad input (an argument that is not an image reference, a bad timeout, a --from-check
    file that is not check's JSON): exit 2."""


# ---- the images of a report ----------------------------------------------------------------

MAX_CHECK_JSON = 64 * 1024 * 1024
_POOL_RULES = frozenset({"poolsCannotStream", "noStreamingPools"})


def _short(value: object, limit: int = 200) -> str:
    return printable(str(value))[:limit]


def uses_from_check(text: str, *, source: str = "--from-check") -> list[ImageUse]:
    """Every container image of `streamgate check -o json` output, with what blocks it."""
    if len(text) > MAX_CHECK_JSON:
        raise ConvertError(f"{source}: larger than {MAX_CHECK_JSON // (1024 * 1024)} MiB")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ConvertError(
            f"{source}: not JSON ({_short(err, 120)}); give the output of "
            "`streamgate check -o json`"
        ) from err
    if not isinstance(doc, list):
        raise ConvertError(
            f"{source}: not what `streamgate check -o json` writes (a list of workloads)"
        )
    uses: list[ImageUse] = []
    for index, item in enumerate(doc):
        where = f"{source}: entry {index + 1}"
        if not isinstance(item, dict):
            raise ConvertError(f"{where} is not a workload object")
        images, problems = item.get("images", []), item.get("problems", [])
        if not isinstance(images, list) or not isinstance(problems, list):
            raise ConvertError(f"{where}: 'images' and 'problems' must be lists")
        rules = {p.get("rule") for p in problems if isinstance(p, dict)}
        pools_blocked = bool(rules & _POOL_RULES)
        workload = "/".join(
            _short(item.get(key) or "?", 100) for key in ("namespace", "kind", "name")
        )
        for image in images:
            if not isinstance(image, dict):
                raise ConvertError(f"{where}: an image entry is not an object")
            ref, verdict = image.get("image"), image.get("verdict")
            if not isinstance(ref, str) or not ref or not isinstance(verdict, str):
                raise ConvertError(f"{where}: an image entry lacks 'image' or 'verdict'")
            blockers: tuple[Blocker, ...] = (
                (Blocker.DIGEST,) if image.get("digestPinned") is True else ()
            )
            if pools_blocked:
                blockers += (Blocker.POOLS,)
            reason = image.get("reason")
            uses.append(
                ImageUse(
                    ref,
                    _short(verdict, 40),
                    workload,
                    _short(reason) if isinstance(reason, str) else "",
                    blockers,
                )
            )
    return uses


def read_check_file(path: str, stdin: TextIO | None = None) -> list[ImageUse]:
    """`--from-check FILE` (`-`: standard input)."""
    source = f"--from-check {path}"
    try:
        if path == "-":
            text = (stdin or sys.stdin).read(MAX_CHECK_JSON + 1)
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(MAX_CHECK_JSON + 1)
    except UnicodeDecodeError as err:
        raise ConvertError(f"{source}: not UTF-8 text ({err.reason})") from err
    except OSError as err:
        raise ConvertError(f"{source}: {err.strerror or err}") from err
    return uses_from_check(text, source=source)


def uses_from_scan(report: Any) -> list[ImageUse]:
    """Every judged container image of a `scan` report (app.cli.scan.Report)."""
    uses: list[ImageUse] = []
    for row in report.rows:
        pools_blocked = row.pools_cannot_stream
        workload = f"{row.namespace}/{row.kind}/{row.name}"
        for rep in row.judged:
            blockers: tuple[Blocker, ...] = ()
            if rep.ref is not None and rep.ref.digest_pinned:
                blockers += (Blocker.DIGEST,)
            if pools_blocked:
                blockers += (Blocker.POOLS,)
            uses.append(
                ImageUse(
                    rep.container.image,
                    rep.verdict.verdict.value,
                    workload,
                    rep.verdict.reason,
                    blockers,
                )
            )
    return uses


def skipped_line(image: str, why: str) -> str:
    return f"{image}: skipped: {why}"


@dataclass(frozen=True, slots=True)
class Target:
    plan: ConversionPlan
    ref: ImageRef | None = None
    digest: str | None = None
    auth: bool = False  # the look-up failed because the registry refused the credentials


@dataclass(slots=True)
class Summary:
    images: int = 0
    would_start: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    streamable: int = 0
    under_way: int = 0
    not_acr: int = 0
    unfinished: int = 0  # not followed (--no-wait)
    timed_out: int = 0  # still running at --timeout
    skipped: int = 0  # from a report: not streamable for other reasons, or unknown there
    auth_failed: int = 0  # of `failed`: the registry refused the credentials or the push right
    repos_on: int = 0  # auto-conversion turned on
    repos_already: int = 0  # auto-conversion was on already
    repos_would: int = 0  # --dry-run: would turn it on
    repos_failed: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every image and repository ended well: exit 0 (else 1, or 4 for auth)."""
        return self.failed == 0 and self.timed_out == 0 and self.repos_failed == 0

    @property
    def auth(self) -> bool:
        """Something failed because the registry refused the credentials or the write."""
        return self.auth_failed > 0

    def line(self, *, dry_run: bool = False) -> str:
        parts = [
            (self.would_start, "to start" if dry_run else ""),
            (self.started, "started"),
            (self.succeeded, "succeeded"),
            (self.failed, "failed"),
            (self.streamable, "already streamable"),
            (self.under_way, "already converting"),
            (self.not_acr, "not in ACR"),
            (self.unfinished, "not followed (--no-wait)"),
            (self.timed_out, "still running at --timeout"),
            (self.skipped, "skipped"),
        ]
        said = [f"{n} {what}" for n, what in parts if n and what]
        noun = "image" if self.images == 1 else "images"
        text = f"{self.images} {noun}: " + (", ".join(said) or "nothing to do")
        repos = [
            (self.repos_would, "to turn on"),
            (self.repos_on, "turned on"),
            (self.repos_already, "already on"),
            (self.repos_failed, "failed"),
        ]
        said = [f"{n} {what}" for n, what in repos if n]
        if said:
            text += "; auto-conversion of pushed images: " + ", ".join(said)
        return text


# What to do about each failure code (its meaning: app/registry/conversion.py; docs/cli.md).
FAILURE_FIXES = {
    "UNKNOWN_ERROR": "run the same command again",
    "RESOURCE_NOT_FOUND": "check the image still exists, then run the same command again",
    "UNSUPPORTED_PLATFORM": "push a linux/amd64 image (or an index with a linux/amd64 entry)",
    "NO_SUPPORTED_PLATFORM_FOUND": "push a linux/amd64 image (or an index with one)",
    "UNSUPPORTED_MEDIATYPE": "push it as an OCI or Docker v2 image",
    "UNSUPPORTED_ARTIFACT_TYPE": "nothing to convert: name the image, not a streaming artifact",
    "IMAGE_NOT_RUNNABLE": "rebuild it as a runnable linux/amd64 image",
}


def failure_fix(code: str | None) -> str:
    if code is None:
        return "see the operation with `az acr artifact-streaming operation show`"
    return FAILURE_FIXES.get(code, "see ACR's artifact streaming troubleshooting page")


def status_line(image: str, status: ConversionStatus) -> str:
    """The line printed when a followed conversion changes state."""
    state = status.state
    if state is ConversionState.RUNNING:
        return f"{image}: running" + (f" ({status.progress})" if status.progress else "")
    if state is ConversionState.NOT_STARTED:
        return f"{image}: queued"
    if state is ConversionState.SUCCEEDED:
        return f"{image}: succeeded: the streaming artifact is in place"
    if state is ConversionState.FAILED:
        code = status.failure_code or "no code"
        meaning, fix = failure_meaning(status.failure_code), failure_fix(status.failure_code)
        return f"{image}: failed ({code}): {meaning}; {fix}"
    if state is ConversionState.CANCELED:
        return f"{image}: canceled in ACR; run the same command to start it again"
    return f"{image}: state unknown"


def plan_line(plan: ConversionPlan) -> str:
    """The line for an image that is not started (idempotency: say what was left alone)."""
    image = plan.image
    if plan.action is ConversionAction.STREAMABLE:
        return f"{image}: streamable already; left alone"
    if plan.action is ConversionAction.NOT_ACR:
        return f"{image}: not an ACR image (only ACR converts); left alone"
    if plan.action is ConversionAction.FOLLOW:
        return f"{image}: a conversion is already under way; not started again"
    if plan.action is ConversionAction.UNKNOWN:
        return f"{image}: can't tell whether it streams ({plan.reason}); nothing started"
    return f"would start: {image}"


def parse_images(images: list[str]) -> list[tuple[str, ImageRef]]:
    out = []
    for image in unique_images(images):
        try:
            out.append((image, parse_image(image)))
        except InvalidImageRef as err:
            raise ConvertError(f"{image!r} is not an image reference: {err}") from err
    return out


Show = Callable[[str, ConversionStatus], None]


class LiveDisplay:
    """On a terminal: one line per followed conversion (state, percentage when ACR reports
    one, time since it was first seen), redrawn in place below the lines already printed;
    a conversion that ends leaves its final line among those."""

    def __init__(
        self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic, width: int = 0
    ) -> None:
        self.stream = stream
        self.clock = clock
        self.width = width or shutil.get_terminal_size((100, 24)).columns
        self.live: dict[str, tuple[ConversionStatus, float]] = {}
        self.drawn = 0

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write(f"\033[{self.drawn}F\033[J")
            self.drawn = 0

    def _draw(self) -> None:
        now = self.clock()
        for image, (status, since) in self.live.items():
            text = live_line(image, status, now - since)
            self.stream.write(text[: max(self.width - 1, 20)] + "\n")
        self.drawn = len(self.live)
        self.stream.flush()

    def line(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        self._draw()

    def state(self, image: str, status: ConversionStatus) -> None:
        self._clear()
        if status.state in _ENDED:
            self.live.pop(image, None)
            self.stream.write(status_line(image, status) + "\n")
        else:
            since = self.live[image][1] if image in self.live else self.clock()
            self.live[image] = (status, since)
        self._draw()

    def tick(self) -> None:
        if self.live:
            self._clear()
            self._draw()

    def close(self) -> None:
        """Leave the conversions still shown as plain lines (timed out, interrupted)."""
        self._clear()
        self.live.clear()
        self.stream.flush()


def _elapsed(seconds: float) -> str:
    whole = max(int(seconds), 0)
    return f"{whole // 60}:{whole % 60:02d}"


def live_line(image: str, status: ConversionStatus, seconds: float) -> str:
    state = status.state
    word = {
        ConversionState.NOT_STARTED: "queued",
        ConversionState.RUNNING: "running",
        ConversionState.NEVER_REQUESTED: "waiting for ACR",
    }.get(state, "state unknown")
    progress = f" {status.progress}" if status.progress else ""
    return f"{image}: {word}{progress}, {_elapsed(seconds)} elapsed"


async def _ticking(live: LiveDisplay, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        live.tick()


async def convert(
    images: list[str],
    policy: Policy,
    *,
    out: Line,
    dry_run: bool = False,
    wait: bool = True,
    follow_seconds: float = 1800.0,
    interval: float = 1.0,
    max_interval: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
    aad: AadTokenProvider | None = None,
    env: Mapping[str, str] | None = None,
    selection: Selection | None = None,
    auto_repos: bool = False,
    live: LiveDisplay | None = None,
) -> Summary:
    """Plan, then (unless `dry_run`) start and follow. `out` gets every line users read
    (with `live`, pass `live.line`). `selection`: images chosen from a report (converted
    with `images`) and the ones skipped there, printed first. `auto_repos`: also read, and
    turn on where off, the auto-conversion of pushed images of the ACR repositories involved.
    Raises `ConvertError` for bad input before anything is asked."""
    if not follow_seconds > 0:
        raise ConvertError(
            f"--timeout must be a positive number of seconds, got {follow_seconds:g}"
        )
    chosen = list(images) + (list(selection.images) if selection else [])
    parsed = parse_images(chosen)
    summary = Summary(images=len(parsed))
    for skip in selection.skipped if selection else ():
        summary.images += 1
        summary.skipped += 1
        out(skipped_line(skip.image, skip.why))
    if not parsed:
        return summary
    config = policy.registry
    pool = ClientPool(
        config,
        aad=aad,
        env=env,
        transport=transport,
        acr_hosts=policy.is_acr,
        aad_hosts=policy.may_get_aad,
    )
    lookup = Lookup(pool=pool, config=config)
    try:
        targets = [await _target(image, ref, policy, pool, lookup) for image, ref in parsed]
        repos = list(
            dict.fromkeys(
                (ref.registry, ref.repository) for _, ref in parsed if policy.is_acr(ref.registry)
            )
        )
        if dry_run:
            if auto_repos:
                for registry, repo in repos:
                    await _auto_repo(pool, registry, repo, summary, out, dry_run=True)
            for t in targets:
                _count_left_alone(summary, t)
                if t.plan.action is ConversionAction.START:
                    summary.would_start += 1
                out(plan_line(t.plan))
            return summary
        if auto_repos:
            for registry, repo in repos:
                await _auto_repo(pool, registry, repo, summary, out, dry_run=False)

        def plain(image: str, status: ConversionStatus) -> None:
            out(status_line(image, status))

        runner = _Runner(
            pool=pool,
            summary=summary,
            out=out,
            show=live.state if live is not None else plain,
            wait=wait,
            deadline=time.monotonic() + follow_seconds,
            interval=interval,
            max_interval=max_interval,
        )
        ticker = asyncio.create_task(_ticking(live, 0.5)) if live is not None else None
        try:
            await asyncio.gather(*(runner.run(t) for t in targets))
        finally:
            if ticker is not None:
                ticker.cancel()
            if live is not None:
                live.close()
        return summary
    finally:
        await lookup.aclose()
        await pool.aclose()


async def _auto_repo(
    pool: ClientPool, registry: str, repo: str, summary: Summary, out: Line, *, dry_run: bool
) -> None:
    """Read a repository's auto-conversion of pushed images; turn it on unless on already."""
    name = f"{registry}/{repo}"
    transport = pool.transport(registry)
    try:
        if await auto_conversion(transport, repo):
            summary.repos_already += 1
            out(f"{name}: auto-conversion of pushed images is on already; left alone")
            return
        if dry_run:
            summary.repos_would += 1
            out(f"would turn on auto-conversion of pushed images: {name}")
            return
        if not await enable_auto_conversion(transport, repo):
            summary.repos_failed += 1
            out(f"{name}: auto-conversion not turned on: ACR still reports it off")
            return
    except RegistryAuthError as err:
        summary.repos_failed += 1
        summary.auth_failed += 1
        out(
            f"{name}: auto-conversion not changed: {err.reason}: turning it on needs push "
            "rights on the repository (docs/remediation.md)"
        )
        return
    except RegistryError as err:
        summary.repos_failed += 1
        out(f"{name}: auto-conversion not changed: {err.reason}")
        return
    summary.repos_on += 1
    out(f"{name}: auto-conversion of pushed images turned on (new pushes convert)")


def _count_left_alone(summary: Summary, target: Target) -> None:
    plan = target.plan
    action = plan.action
    if action is ConversionAction.STREAMABLE:
        summary.streamable += 1
    elif action is ConversionAction.NOT_ACR:
        summary.not_acr += 1
    elif action is ConversionAction.FOLLOW:
        summary.under_way += 1
    elif action is ConversionAction.UNKNOWN:
        summary.failed += 1
        summary.auth_failed += target.auth
        summary.failures.append(plan.image)


async def _target(
    image: str, ref: ImageRef, policy: Policy, pool: ClientPool, lookup: Lookup
) -> Target:
    if not policy.is_acr(ref.registry):
        return Target(plan_conversion(image, Verdict.NOT_ACR, under_way=False))
    try:
        async with asyncio.timeout(policy.registry.background_seconds):
            result = await lookup.run(ref)
    except TimeoutError:
        return Target(
            plan_conversion(image, Verdict.UNKNOWN, under_way=False, reason="registry timed out")
        )
    except RegistryError as err:
        verdict = verdict_for_error(err)
        return Target(
            plan_conversion(image, verdict.verdict, under_way=False, reason=verdict.reason),
            auth=isinstance(err, RegistryAuthError),
        )
    verdict = verdict_for(ref, result, platform=policy.registry.wanted_platform)
    under_way = result.conversion is not None and result.conversion.state in _UNDER_WAY
    plan = plan_conversion(image, verdict.verdict, under_way=under_way, reason=verdict.reason)
    return Target(plan, ref, result.digest)


@dataclass(slots=True)
class _Runner:
    """Starts and follows the conversions of one `convert` run."""

    pool: ClientPool
    summary: Summary
    out: Line
    show: Show
    wait: bool
    deadline: float
    interval: float
    max_interval: float

    async def run(self, t: Target) -> None:
        plan = t.plan
        if plan.action not in (ConversionAction.START, ConversionAction.FOLLOW):
            _count_left_alone(self.summary, t)
            self.out(plan_line(plan))
            return
        assert t.ref is not None and t.digest is not None
        transport = self.pool.transport(t.ref.registry)
        repo = t.ref.repository
        try:
            if plan.action is ConversionAction.START:
                op = await start_conversion(transport, repo, t.digest)
                self.summary.started += 1
                self.out(
                    f"{plan.image}: conversion started" + (f" (operation {op.id})" if op.id else "")
                )
            else:
                self.summary.under_way += 1
                self.out(plan_line(plan))
                op = await last_operation(transport, repo, t.digest)
        except RegistryAuthError as err:
            self.summary.auth_failed += 1
            self.fail(
                plan.image,
                f"{err.reason}: starting a conversion needs push rights "
                "on the repository (docs/remediation.md)",
            )
            return
        except RegistryError as err:
            self.fail(plan.image, f"{err.reason}; nothing started")
            return
        if not self.wait:
            self.summary.unfinished += 1
            return
        await self.follow(plan.image, transport, repo, t.digest, op.id)

    def fail(self, image: str, why: str) -> None:
        self.summary.failed += 1
        self.summary.failures.append(image)
        self.out(f"{image}: failed: {why}")

    async def follow(
        self, image: str, transport: RegistryTransport, repo: str, digest: str, op_id: str | None
    ) -> None:
        last: tuple[ConversionState, str | None] | None = None
        errors = 0
        wait_s = self.interval
        while True:
            try:
                if op_id is not None:
                    status = await operation_status(transport, repo, op_id)
                else:
                    status = (await last_operation(transport, repo, digest)).status
                errors = 0
            except RegistryError as err:
                errors += 1
                if errors >= MAX_POLL_ERRORS:
                    self.fail(
                        image,
                        f"lost track of the conversion ({err.reason}); "
                        "run the same command again to follow it",
                    )
                    return
                status = None
            if status is not None:
                key = (status.state, status.progress)
                if key != last:
                    self.show(image, status)
                    last = key
                    wait_s = self.interval
                if status.state in _ENDED:
                    if status.state is ConversionState.SUCCEEDED:
                        self.summary.succeeded += 1
                    else:
                        self.summary.failed += 1
                        self.summary.failures.append(image)
                    return
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.summary.timed_out += 1
                self.out(
                    f"{image}: still converting at --timeout; "
                    "run the same command again to follow it"
                )
                return
            await asyncio.sleep(min(wait_s, remaining))
            wait_s = min(wait_s * 2, self.max_interval)
