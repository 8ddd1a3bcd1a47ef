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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from app.core.conversions import ConversionAction, ConversionPlan, plan_conversion, unique_images
from app.core.images import ImageRef, InvalidImageRef, parse_image
from app.core.policy import Policy
from app.core.verdicts import Verdict
from app.registry.conversion import ConversionState, ConversionStatus, failure_meaning
from app.registry.convert import last_operation, operation_status, start_conversion
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
    """Bad input (an argument that is not an image reference, a bad timeout): exit 2."""


@dataclass(frozen=True, slots=True)
class Target:
    plan: ConversionPlan
    ref: ImageRef | None = None
    digest: str | None = None


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
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every image ended well: exit 0 (else 1)."""
        return self.failed == 0 and self.timed_out == 0

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
        ]
        said = [f"{n} {what}" for n, what in parts if n and what]
        noun = "image" if self.images == 1 else "images"
        return f"{self.images} {noun}: " + (", ".join(said) or "nothing to do")


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
        return f"{image}: failed ({code}): {failure_meaning(status.failure_code)}"
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
) -> Summary:
    """Plan, then (unless `dry_run`) start and follow. `out` gets every line users read.
    Raises `ConvertError` for bad input before anything is asked."""
    if not follow_seconds > 0:
        raise ConvertError(
            f"--timeout must be a positive number of seconds, got {follow_seconds:g}"
        )
    parsed = parse_images(images)
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
    summary = Summary(images=len(parsed))
    try:
        targets = [await _target(image, ref, policy, pool, lookup) for image, ref in parsed]
        if dry_run:
            for t in targets:
                _count_left_alone(summary, t.plan)
                if t.plan.action is ConversionAction.START:
                    summary.would_start += 1
                out(plan_line(t.plan))
            return summary
        runner = _Runner(
            pool=pool,
            summary=summary,
            out=out,
            wait=wait,
            deadline=time.monotonic() + follow_seconds,
            interval=interval,
            max_interval=max_interval,
        )
        await asyncio.gather(*(runner.run(t) for t in targets))
        return summary
    finally:
        await lookup.aclose()
        await pool.aclose()


def _count_left_alone(summary: Summary, plan: ConversionPlan) -> None:
    action = plan.action
    if action is ConversionAction.STREAMABLE:
        summary.streamable += 1
    elif action is ConversionAction.NOT_ACR:
        summary.not_acr += 1
    elif action is ConversionAction.FOLLOW:
        summary.under_way += 1
    elif action is ConversionAction.UNKNOWN:
        summary.failed += 1
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
            plan_conversion(image, verdict.verdict, under_way=False, reason=verdict.reason)
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
    wait: bool
    deadline: float
    interval: float
    max_interval: float

    async def run(self, t: Target) -> None:
        plan = t.plan
        if plan.action not in (ConversionAction.START, ConversionAction.FOLLOW):
            _count_left_alone(self.summary, plan)
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
                    self.out(status_line(image, status))
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
