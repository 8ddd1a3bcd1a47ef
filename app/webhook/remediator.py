"""The webhook's remediator: starts the streaming conversions admissions ask for, off the
request path (policy `remediation`, docs/remediation.md).

`request()` is called by an admission on the event loop, for an ACR image without a streaming
artifact in a namespace where remediation is on. It never waits and never does I/O: it books
the conversion (deduplicated by registry, repository and digest; limited per registry per
minute and per hour in all, `app.core.remediation.Limiter`) on a bounded queue and answers the
reason the admission's warning shows (`STARTED`), or None when nothing was booked (the warning
then keeps the `az` fix command).

`run()` is the one worker, beside the server: for each booked conversion it reads ACR's record
of the digest first (`GET /acr/v1/<repo>/_streaming/<digest>`: another replica, the CLI or a
person may have started one; then it is followed, not started twice), starts it (`POST`, with a
token scoped `pull,push`: only this call asks for push), and follows its operation in a task of
its own, writing each state into the verdict caches so later admissions read "conversion
running (42%)", then, once it has succeeded, look the referrers up again and find it
streamable. A registry that refuses the write (403) is reported once and gets no more
conversions until the policy changes. When a conversion ends, each workload that asked for it
(up to `MAX_WORKLOADS`) gets an Event, when Events are on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.core import messages
from app.core.images import ImageRef
from app.core.policy import Policy
from app.core.remediation import STARTED, Limiter, Refusal
from app.registry.conversion import (
    FAILURE_CODES,
    ConversionState,
    ConversionStatus,
    failure_meaning,
)
from app.registry.convert import last_operation, operation_status, start_conversion
from app.registry.errors import RegistryAuthError, RegistryError
from app.registry.transport import RegistryTransport
from app.telemetry.events import ObjectRef

logger = logging.getLogger(__name__)

MAX_WORKLOADS = 10  # workloads told (by Event) when one conversion ends
MAX_TRACKED = 10_000  # conversions remembered (for deduplication and `retrySeconds`)
MAX_FORBIDDEN = 1024  # registries remembered as refusing writes
START_SECONDS = 30.0  # reading ACR's record and starting one conversion, at most
DENIED = "registry denied access"  # RegistryAuthError's reason for a 403 (app/registry/transport)
_UNDER_WAY = (ConversionState.NOT_STARTED, ConversionState.RUNNING)

REASON_SUCCEEDED = "StreamingConversionSucceeded"
REASON_FAILED = "StreamingConversionFailed"
REASON_REFUSED = "StreamingConversionRefused"


class ConversionCaches(Protocol):
    """What the remediator needs of the registry client (RegistryVerdictSource has it)."""

    def transport(self, registry: str) -> RegistryTransport: ...

    def learn_conversion(
        self, registry: str, repository: str, digest: str, status: ConversionStatus
    ) -> None: ...

    def forget_missing(self, registry: str, repository: str, digest: str) -> None: ...


class RemediationObserver(Protocol):
    """Counts conversions (app/telemetry/metrics.py): `result` started, adopted (one under way
    already, followed), succeeded, failed, skipped; `reason` for failed and skipped."""

    def on_conversion(self, result: str, reason: str = "") -> None: ...


class _NoObserver:
    def on_conversion(self, result: str, reason: str = "") -> None:
        return None


class Notify(Protocol):
    """Sends an Event (EventRecorder.notify)."""

    def __call__(self, involved: ObjectRef, reason: str, message: str, *, normal: bool) -> None: ...


@dataclass(slots=True)
class Conversion:
    """One digest's conversion, from its first sighting to its end."""

    ref: ImageRef  # the first sighting, as written (what messages show)
    registry: str
    repository: str
    digest: str
    state: str = "queued"  # queued, started, done
    operation: str | None = None
    finished_at: float = 0.0
    workloads: list[ObjectRef] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.registry, self.repository, self.digest)

    def tell(self, workload: ObjectRef | None) -> None:
        if (
            workload is not None
            and workload.uid
            and len(self.workloads) < MAX_WORKLOADS
            and workload not in self.workloads
        ):
            self.workloads.append(workload)


class Remediator:
    """See the module docstring. `policy`: the policy in force (read at each step: a reload
    that turns remediation off stops new bookings at once). `notify`: sends an Event (None:
    Events are off). `sleep`/`clock` are the test's to replace."""

    def __init__(
        self,
        caches: ConversionCaches,
        policy: Callable[[], Policy],
        *,
        observer: RemediationObserver | None = None,
        notify: Notify | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._caches = caches
        self._sleep = sleep
        self._policy = policy
        self._observer = observer or _NoObserver()
        self._notify = notify
        self._clock = clock
        settings = policy().remediation
        self._limiter = Limiter(
            per_minute=settings.per_registry_per_minute, per_hour=settings.per_hour
        )
        self._queue: asyncio.Queue[Conversion] = asyncio.Queue()
        self._queued = 0
        self.tracked: OrderedDict[tuple[str, str, str], Conversion] = OrderedDict()
        # registry -> the policy under which it refused a write: no more bookings until it changes
        self._forbidden: OrderedDict[str, Policy] = OrderedDict()
        self._warned: dict[Refusal, float] = {}
        self._follows: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- the admission side: on the event loop, never waits -----------------------------------

    def request(self, ref: ImageRef, digest: str, workload: ObjectRef | None = None) -> str | None:
        """Book the conversion of `ref` (resolved to `digest`); the reason the admission's
        verdict carries from now on (`STARTED`), or None when none was booked."""
        policy = self._policy()
        registry = ref.registry.lower()
        key = (registry, ref.repository, digest)
        now = self._clock()
        known = self._known(key, policy, now)
        if known is not None:
            if known.state == "done":
                return None  # the verdict says how it ended; not asked again so soon
            known.tell(workload)
            return STARTED
        refusal = self._refusal(policy, registry, now)
        if refusal is not None:
            self._observer.on_conversion("skipped", refusal.value)
            self._log_refusal(ref, refusal, policy, now)
            return None
        conversion = Conversion(ref, registry, ref.repository, digest)
        conversion.tell(workload)
        self.tracked[key] = conversion
        while len(self.tracked) > MAX_TRACKED:
            self.tracked.popitem(last=False)
        self._queued += 1
        self._idle.clear()
        self._queue.put_nowait(conversion)
        return STARTED

    def wants_judging(self, ref: ImageRef, digest: str, policy: Policy) -> bool:
        """Whether an admission must be judged anew for this image, rather than answered from
        a decision memoised before: a booking is under way (its warning says so), or `request`
        could book one now (never seen, or its retry is due, on a registry it may convert in).
        No I/O, like `request`."""
        key = (ref.registry.lower(), ref.repository, digest)
        known = self._known(key, policy, self._clock())
        if known is not None:
            return known.state != "done"
        return self._closed(policy, key[0]) is None

    def _known(self, key: tuple[str, str, str], policy: Policy, now: float) -> Conversion | None:
        """The conversion of `key` under way, or ended less than `retrySeconds` ago; one that
        ended longer ago is forgotten (None: it may be booked again)."""
        known = self.tracked.get(key)
        if (
            known is not None
            and known.state == "done"
            and now - known.finished_at >= policy.remediation.retry_seconds
        ):
            del self.tracked[key]
            return None
        return known

    def _closed(self, policy: Policy, registry: str) -> Refusal | None:
        """Why `registry` gets no conversion under `policy` whatever the limits say."""
        if not policy.may_convert(registry):
            return Refusal.REGISTRY
        if self._forbidden.get(registry) == policy:
            return Refusal.FORBIDDEN
        return None

    def _log_refusal(self, ref: ImageRef, refusal: Refusal, policy: Policy, now: float) -> None:
        """Each skip at debug level (every sighting would flood the log: the metric counts
        them); a spent budget or a full queue also once a minute as a warning."""
        logger.debug("conversion of %s not started: %s", messages.printable(ref.raw), refusal)
        if (
            refusal in (Refusal.BUDGET, Refusal.QUEUE)
            and now - self._warned.get(refusal, -1e9) >= 60
        ):
            self._warned[refusal] = now
            settings = policy.remediation
            why = (
                f"the hourly budget is spent (remediation.perHour: {settings.per_hour})"
                if refusal is Refusal.BUDGET
                else f"the queue is full (remediation.queueSize: {settings.queue_size})"
            )
            logger.warning("remediation: conversions not started: %s", why)

    def _refusal(self, policy: Policy, registry: str, now: float) -> Refusal | None:
        settings = policy.remediation
        closed = self._closed(policy, registry)
        if closed is not None:
            return closed
        self._forbidden.pop(registry, None)  # refused under an earlier policy: try again
        if self._queued >= settings.queue_size:
            return Refusal.QUEUE
        # The limits as the policy in force says (a reload may change them).
        self._limiter.per_minute = settings.per_registry_per_minute
        self._limiter.per_hour = settings.per_hour
        return self._limiter.take(registry, now)

    # ---- the worker ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Start booked conversions, one at a time, until cancelled; follows run beside."""
        try:
            while True:
                conversion = await self._queue.get()
                self._queued -= 1
                try:
                    async with asyncio.timeout(START_SECONDS):
                        await self._start(conversion)
                except TimeoutError:
                    logger.warning("conversion of %s: no answer in time", conversion.ref.raw)
                    self._finish(conversion, "failed", "timeout")
                except Exception:
                    logger.exception("conversion of %s failed unexpectedly", conversion.ref.raw)
                    self._finish(conversion, "failed", "error")
                finally:
                    self._maybe_idle()
        finally:
            for task in list(self._follows):
                task.cancel()
            for task in list(self._follows):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def wait_idle(self) -> None:
        """Returns once nothing is queued or followed (tests bound it with a timeout)."""
        await self._idle.wait()

    def _maybe_idle(self) -> None:
        if self._queued == 0 and not self._follows:
            self._idle.set()

    async def _start(self, conversion: Conversion) -> None:
        c = conversion
        policy = self._policy()
        if not policy.remediation.anywhere or self._closed(policy, c.registry) is not None:
            self._limiter.give_back(c.registry)
            self._finish(c, "skipped", "off")
            return
        transport = self._caches.transport(c.registry)
        try:
            last = await last_operation(transport, c.repository, c.digest)
        except RegistryError as err:
            self._limiter.give_back(c.registry)
            logger.warning("conversion of %s not started: %s", c.ref.raw, err)
            self._finish(c, "failed", "unavailable")
            return
        if last.status.state in _UNDER_WAY:  # someone else started it: follow theirs
            self._limiter.give_back(c.registry)
            self._observer.on_conversion("adopted")
            c.operation = last.id
            self._caches.learn_conversion(c.registry, c.repository, c.digest, last.status)
            self._follow(c)
            return
        if last.status.state is ConversionState.SUCCEEDED:
            self._limiter.give_back(c.registry)
            self._caches.forget_missing(c.registry, c.repository, c.digest)
            self._finish(c, "skipped", "converted-already")
            return
        try:
            operation = await start_conversion(transport, c.repository, c.digest)
        except RegistryAuthError as err:
            if err.reason == DENIED:
                self._refused(c, policy)
            else:
                logger.warning("conversion of %s not started: %s", c.ref.raw, err)
                self._finish(c, "failed", "auth")
            return
        except RegistryError as err:
            logger.warning("conversion of %s not started: %s", c.ref.raw, err)
            self._finish(c, "failed", "unavailable")
            return
        c.operation = operation.id
        self._observer.on_conversion("started")
        logger.info(
            "conversion started: %s (%s/%s@%s, operation %s)",
            messages.printable(c.ref.raw),
            c.registry,
            c.repository,
            c.digest,
            operation.id or "-",
        )
        status = operation.status
        if status.state is ConversionState.UNKNOWN:
            status = ConversionStatus(ConversionState.NOT_STARTED)
        self._caches.learn_conversion(c.registry, c.repository, c.digest, status)
        self._follow(c)

    def _refused(self, c: Conversion, policy: Policy) -> None:
        self._forbidden[c.registry] = policy
        while len(self._forbidden) > MAX_FORBIDDEN:
            self._forbidden.popitem(last=False)
        logger.error(
            "remediation off for %s until the policy changes: it refused to start a conversion "
            "(HTTP 403). Starting one needs push rights on the repository (AcrPush, or an "
            "ABAC role that writes to it) for the webhook's identity: docs/remediation.md",
            c.registry,
        )
        text = (
            f"streaming conversion of {messages.display(c.ref)} refused: {c.registry} denied "
            "the webhook's identity push rights (grant AcrPush, docs/remediation.md); "
            "conversions there are off until the policy changes"
        )
        self._finish(c, "failed", "forbidden", event=(REASON_REFUSED, text, False))

    def _follow(self, c: Conversion) -> None:
        c.state = "started"
        task = asyncio.ensure_future(self._following(c))
        self._follows.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._follows.discard(t)
            self._maybe_idle()

        task.add_done_callback(done)

    async def _following(self, c: Conversion) -> None:
        settings = self._policy().remediation
        deadline = self._clock() + settings.follow_seconds
        transport = self._caches.transport(c.registry)
        while self._clock() < deadline:
            await self._sleep(self._policy().remediation.poll_seconds)
            try:
                if c.operation:
                    status = await operation_status(transport, c.repository, c.operation)
                else:
                    status = (await last_operation(transport, c.repository, c.digest)).status
            except RegistryError as err:
                logger.info("conversion of %s: reading its state: %s", c.ref.raw, err)
                continue
            self._caches.learn_conversion(c.registry, c.repository, c.digest, status)
            if status.state is ConversionState.SUCCEEDED:
                self._caches.forget_missing(c.registry, c.repository, c.digest)
                text = (
                    f"streaming conversion of {messages.display(c.ref)} finished; "
                    "the next rollout streams"
                )
                self._finish(c, "succeeded", "", event=(REASON_SUCCEEDED, text, True))
                return
            if status.state in (ConversionState.FAILED, ConversionState.CANCELED):
                if status.state is ConversionState.FAILED:
                    code = status.failure_code
                    what = f"failed ({code or 'no code'}): {failure_meaning(code)}"
                    reason = (code if code in FAILURE_CODES else "other") if code else "no-code"
                else:
                    what, reason = "was canceled", "canceled"
                text = f"streaming conversion of {messages.display(c.ref)} {what}"
                self._finish(c, "failed", reason, event=(REASON_FAILED, text, False))
                return
        logger.warning(
            "conversion of %s still not finished after %.0f s: no longer followed",
            c.ref.raw,
            settings.follow_seconds,
        )
        self._finish(c, "failed", "timeout")

    def _finish(
        self,
        c: Conversion,
        result: str,
        reason: str,
        *,
        event: tuple[str, str, bool] | None = None,
    ) -> None:
        c.state, c.finished_at = "done", self._clock()
        self._observer.on_conversion(result, reason)
        if result in ("succeeded", "failed"):
            why = f" ({reason})" if reason else ""
            logger.info("conversion %s: %s%s", result, messages.printable(c.ref.raw), why)
        if event is not None and self._notify is not None:
            reason_name, text, normal = event
            for workload in c.workloads:
                try:
                    self._notify(workload, reason_name, messages.printable(text), normal=normal)
                except Exception:
                    logger.exception("event about the conversion of %s not sent", c.ref.raw)
