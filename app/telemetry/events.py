"""Kubernetes Events about decisions: a Warning Event on the workload when streamgate warns
or denies, so `kubectl describe` shows it beside the scheduler's and the kubelet's.

Off by default (`streamgate serve --events`). After each /validate decision admission calls
`EventRecorder.record(req, decision)` on the event loop; `record` only decides whether an
Event is due and puts it on a bounded queue, it never waits. One daemon thread sends the
Events with the kubernetes client (core/v1 Events, what `kubectl describe` reads).

- Which: warnings give reason `StreamingWarning`, a denial `StreamingDenied`; the message is
  the problems, one per `; `, at most `MAX_MESSAGE` characters. Dry-run requests, skipped
  objects and audit mode (annotations and logs only) give none.
- On which object: UPDATEs and allowed CREATEs name the object itself with its uid (the
  apiserver sets `metadata.uid` before validating admission, so it is the stored object's).
  A denied CREATE leaves no object behind: the Event goes on the object's controller
  (`ownerReferences` with `controller: true`, e.g. the ReplicaSet of a pod), where
  `kubectl describe` shows it next to the controller's own FailedCreate; a denied object
  without a controller gets none (the denial went to whoever created it, and there is
  nothing to confirm, below).
- Only on objects that exist (app/telemetry/event_checks.py): anyone who reaches the port
  can post a review, so before sending, the sender reads the named object (metadata only)
  and sends only when it exists with the review's uid. An allowed CREATE is stored only
  after validating admission: its Event waits, re-checked after each of `confirm_delays`,
  and is dropped when the object never appears (`unconfirmed`). Confirmations are cached
  briefly. Each namespace then has a token bucket (`namespace_burst` Events, refilled at
  `namespace_rate` a second; `namespace-limited` when empty), spent only by confirmed Events.
- Rate limit: per object (namespace, kind, name, uid) and reason, at most one Event per
  `interval` seconds (5 minutes by default); repeats in between are counted and the next
  Event carries them in `count`. A repeat within `series_seconds` of the first Event patches
  that Event (count, lastTimestamp, message), as client-go's recorder does, so `kubectl
  describe` shows "(x4 over 20m)"; when that Event is gone (the apiserver's event TTL) a new
  one is made.
- A full queue drops the Event. Every outcome is counted through `on_result`:
  sent, failed, dropped, rate-limited, unconfirmed, namespace-limited
  (`streamgate_kubernetes_events_total{result}`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import heapq
import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from app.core.evaluate import Decision, Severity
from app.telemetry.event_checks import UNSUPPORTED, Confirmations, NamespaceBuckets, ObjectsApi

logger = logging.getLogger(__name__)


class AdmissionRequest(Protocol):
    """What an event needs of the admitted request (app.webhook.review.AdmissionRequest has
    it): declared here so telemetry does not depend on the webhook package."""

    @property
    def group(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def operation(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def obj(self) -> Mapping[str, Any] | None: ...
    @property
    def old_obj(self) -> Mapping[str, Any] | None: ...
    @property
    def dry_run(self) -> bool: ...


COMPONENT = "streamgate"
REASON_WARNING = "StreamingWarning"
REASON_DENIED = "StreamingDenied"
MAX_MESSAGE = 1024
DEFAULT_INTERVAL = 300.0
# Events live an hour in the apiserver by default (--event-ttl); patch only well within it.
DEFAULT_SERIES = 45 * 60.0
DEFAULT_QUEUE = 1000
# An allowed CREATE's object is stored after admission: look again after these waits (~15s).
DEFAULT_CONFIRM_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
MAX_KEYS = 10000
_NAME_MAX = 253
_HTTP_NOT_FOUND = 404


class EventsApi(Protocol):
    """The two calls the sender makes; `KubeEventsApi` in production, a fake in unit tests.
    Both raise on failure; `patch` raises `EventGone` when the Event no longer exists."""

    def create(self, namespace: str, body: Mapping[str, Any]) -> None: ...

    def patch(self, namespace: str, name: str, body: Mapping[str, Any]) -> None: ...


class EventGone(Exception):
    """The Event to patch is not there any more (expired): create a new one."""


class KubeEventsApi:
    """core/v1 Events through the official client, raw (no model classes), with timeouts."""

    def __init__(self, api_client: Any, *, timeout: tuple[float, float] = (5.0, 10.0)) -> None:
        from kubernetes import client

        self._core: Any = client.CoreV1Api(api_client)
        self._timeout = timeout

    def create(self, namespace: str, body: Mapping[str, Any]) -> None:
        response = self._core.create_namespaced_event(
            namespace, dict(body), _preload_content=False, _request_timeout=self._timeout
        )
        response.release_conn()

    def patch(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._core.patch_namespaced_event(
                name, namespace, dict(body), _preload_content=False, _request_timeout=self._timeout
            )
        except ApiException as err:
            if err.status == _HTTP_NOT_FOUND:
                raise EventGone(name) from err
            raise
        response.release_conn()


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The involvedObject of an Event."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str = ""

    def as_dict(self) -> dict[str, str]:
        out = {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
        }
        if self.uid:
            out["uid"] = self.uid
        return out


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """One Event to send: `count` occurrences (the rate limit folds repeats into one)."""

    involved: ObjectRef
    reason: str
    message: str
    count: int
    awaiting: bool = False  # an allowed CREATE: the object may not be stored yet
    type: str = "Warning"  # or "Normal" (a conversion that finished)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        o = self.involved
        return (o.namespace, o.kind, o.name, o.uid, self.reason)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _api_version(req: AdmissionRequest, obj: Mapping[str, Any]) -> str:
    written = _str(obj.get("apiVersion"))
    if written:
        return written
    return f"{req.group}/v1" if req.group else "v1"


def involved_object(req: AdmissionRequest, *, denied: bool) -> ObjectRef | None:
    """Which object the Event is about (see the module docstring); None when the request
    names none (no name at all)."""
    obj = _mapping(req.obj)
    meta = _mapping(obj.get("metadata"))
    name = _str(meta.get("name")) or req.name
    if denied and req.operation == "CREATE":
        refs = meta.get("ownerReferences")
        for raw in refs if isinstance(refs, list) else ():
            ref = _mapping(raw)
            if ref.get("controller") is True and _str(ref.get("name")) and _str(ref.get("kind")):
                return ObjectRef(
                    api_version=_str(ref.get("apiVersion")) or "v1",
                    kind=_str(ref.get("kind")),
                    namespace=req.namespace,
                    name=_str(ref.get("name")),
                    uid=_str(ref.get("uid")),
                )
        return None  # never stored, no controller: nothing to confirm it by
    if not name:
        return None
    uid = _str(meta.get("uid"))
    if not uid and req.old_obj is not None:
        uid = _str(_mapping(_mapping(req.old_obj).get("metadata")).get("uid"))
    return ObjectRef(_api_version(req, obj), req.kind, req.namespace, name, uid)


def event_for(req: AdmissionRequest, decision: Decision) -> PendingEvent | None:
    """The Event a decision calls for, before rate limiting; None when it calls for none."""
    if req.dry_run or decision.skipped or not req.namespace:
        return None
    shown = [p for p in decision.problems if p.severity is not Severity.RECORD]
    if not shown:
        return None
    denied = not decision.allowed
    involved = involved_object(req, denied=denied)
    if involved is None:
        return None
    ordered = sorted(shown, key=lambda p: p.severity is not Severity.DENY)
    text = "; ".join(p.message for p in ordered)
    if involved.kind != req.kind:  # on the controller: say which object was refused
        own = _str(_mapping(_mapping(req.obj).get("metadata")).get("name")) or req.name
        text = f"{req.kind} {own or '(generated name)'}: {text}"
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    reason = REASON_DENIED if denied else REASON_WARNING
    return PendingEvent(
        involved, reason, text, 1, awaiting=req.operation == "CREATE" and not denied
    )


@dataclass(slots=True)
class _Due:
    last: float
    suppressed: int = 0


@dataclass(slots=True)
class _Series:
    name: str
    count: int
    started: float  # monotonic


def default_instance() -> str:
    """Which replica reports: the pod name in a cluster, else the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """See the module docstring. `start()` once, `record()` from the event loop, `stop()`."""

    def __init__(
        self,
        api: EventsApi,
        *,
        objects: ObjectsApi,
        interval: float = DEFAULT_INTERVAL,
        series_seconds: float = DEFAULT_SERIES,
        queue_size: int = DEFAULT_QUEUE,
        on_result: Callable[[str], None] = lambda result: None,
        instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = _utc_now,
        max_keys: int = MAX_KEYS,
        confirm_delays: tuple[float, ...] = DEFAULT_CONFIRM_DELAYS,
        confirm_ttl: float = 30.0,
        namespace_rate: float = 0.2,
        namespace_burst: float = 30.0,
    ) -> None:
        self.api = api
        self.objects = objects
        self._confirm_delays = confirm_delays
        self._confirmations = Confirmations(ttl=confirm_ttl, max_keys=max_keys, clock=clock)
        self._buckets = NamespaceBuckets(
            rate=namespace_rate, burst=namespace_burst, max_keys=max_keys, clock=clock
        )
        # events waiting for their object (sender only): (due, seq, attempts made, event)
        self._deferred: list[tuple[float, int, int, PendingEvent]] = []
        self._max_deferred = queue_size
        self._seq = itertools.count()
        self.interval = interval
        self.series_seconds = series_seconds
        self.on_result = on_result
        self.instance = instance or default_instance()
        self._clock = clock
        self._wall = wall
        self._max_keys = max_keys
        self._queue: queue.Queue[PendingEvent] = queue.Queue(maxsize=queue_size)
        self._due: OrderedDict[tuple[str, ...], _Due] = OrderedDict()  # event loop only
        self._series: OrderedDict[tuple[str, ...], _Series] = OrderedDict()  # sender only
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    # ---- the admission side: quick, never blocks ---------------------------------------------

    def record(self, req: AdmissionRequest, decision: Decision) -> None:
        event = event_for(req, decision)
        if event is not None:
            self._enqueue(event)

    def notify(self, involved: ObjectRef, reason: str, message: str, *, normal: bool) -> None:
        """An Event that no admission decided (a conversion streamgate started has finished),
        on an object an admission named; confirmed, rate-limited and sent like the others."""
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        self._enqueue(
            PendingEvent(involved, reason, message, 1, type="Normal" if normal else "Warning")
        )

    def _enqueue(self, event: PendingEvent) -> None:
        """The per-object rate limit, then the queue (a full one drops the Event)."""
        now = self._clock()
        key = event.key
        due = self._due.get(key)
        if due is not None and now - due.last < self.interval:
            due.suppressed += 1
            self.on_result("rate-limited")
            return
        count = 1 + (due.suppressed if due is not None else 0)
        self._due[key] = _Due(last=now)
        self._due.move_to_end(key)
        while len(self._due) > self._max_keys:
            self._due.popitem(last=False)
        try:
            self._idle.clear()
            self._queue.put_nowait(dataclasses.replace(event, count=count))
        except queue.Full:
            self.on_result("dropped")
            logger.warning("event queue full: dropped %s on %s", event.reason, key[:3])

    # ---- the sending side: one thread ----------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="streamgate-events", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Sends what is queued (within `timeout`), then stops the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("event sender did not stop within %.1fs", timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until everything queued so far was sent (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._quiet() and self._idle.wait(0.05):
                return True
        return self._quiet() and self._idle.is_set()

    def _quiet(self) -> bool:
        return self._queue.empty() and not self._deferred

    def _run(self) -> None:
        while True:
            self._send_due()
            wait = 0.2
            if self._deferred:
                wait = min(wait, max(0.0, self._deferred[0][0] - time.monotonic()))
            try:
                event = self._queue.get(timeout=wait)
            except queue.Empty:
                if self._quiet():
                    self._idle.set()
                if self._stop.is_set():
                    return
                continue
            try:
                self.send(event)
            finally:
                self._queue.task_done()
                if self._quiet():
                    self._idle.set()

    def _send_due(self) -> None:
        now = time.monotonic()
        while self._deferred and self._deferred[0][0] <= now:
            _, _, attempts, event = heapq.heappop(self._deferred)
            self.send(event, attempts=attempts)
        if self._quiet():
            self._idle.set()

    def send(self, event: PendingEvent, *, attempts: int = 0) -> None:
        """Confirm the object, then create the Event or patch the one already made for this
        object and reason."""
        try:
            confirmed = self._confirmed(event.involved)
        except Exception as err:
            self._failed(event, err)
            return
        waits = confirmed is None and event.awaiting and attempts < len(self._confirm_delays)
        if waits and len(self._deferred) < self._max_deferred:
            due = time.monotonic() + self._confirm_delays[attempts]
            heapq.heappush(self._deferred, (due, next(self._seq), attempts + 1, event))
            return
        if not confirmed:
            self.on_result("unconfirmed")
            logger.info(
                "event %s on %s %s/%s not sent: no such object with uid %r",
                event.reason,
                event.involved.kind,
                event.involved.namespace,
                event.involved.name,
                event.involved.uid,
            )
            return
        if not self._buckets.take(event.involved.namespace):
            self.on_result("namespace-limited")
            return
        try:
            self._send(event)
        except Exception as err:
            self._failed(event, err)
            return
        self.on_result("sent")

    def _failed(self, event: PendingEvent, err: Exception) -> None:
        self.on_result("failed")
        logger.warning(
            "event %s on %s %s/%s not sent: %s",
            event.reason,
            event.involved.kind,
            event.involved.namespace,
            event.involved.name,
            _short_error(err),
        )

    def _confirmed(self, ref: ObjectRef) -> bool | None:
        """True: the object exists with that uid; None: not (yet); False: never will
        (no uid, or a kind streamgate doesn't read)."""
        if not ref.uid:
            return False
        key = (ref.namespace, ref.api_version, ref.kind, ref.name, ref.uid)
        if self._confirmations.known(key):
            return True
        uid = self.objects.uid_of(ref.api_version, ref.kind, ref.namespace, ref.name)
        if uid == UNSUPPORTED:
            return False
        if uid != ref.uid:
            return None
        self._confirmations.add(key)
        return True

    def _send(self, event: PendingEvent) -> None:
        key = event.key
        now = self._clock()
        stamp = _timestamp(self._wall())
        series = self._series.get(key)
        if series is not None and now - series.started < self.series_seconds:
            body: dict[str, Any] = {
                "count": series.count + event.count,
                "lastTimestamp": stamp,
                "message": event.message,
            }
            with contextlib.suppress(EventGone):
                self.api.patch(event.involved.namespace, series.name, body)
                series.count += event.count
                return
        name = self._event_name(event.involved.name)
        self.api.create(event.involved.namespace, self._body(event, name, stamp))
        self._series[key] = _Series(name=name, count=event.count, started=now)
        self._series.move_to_end(key)
        while len(self._series) > self._max_keys:
            self._series.popitem(last=False)

    def _event_name(self, object_name: str) -> str:
        suffix = f".{time.time_ns():x}"
        return object_name[: _NAME_MAX - len(suffix)] + suffix

    def _body(self, event: PendingEvent, name: str, stamp: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": event.involved.namespace},
            "involvedObject": event.involved.as_dict(),
            "reason": event.reason,
            "message": event.message,
            "type": event.type,
            "count": event.count,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance[:128],
            "action": "Admission",
        }


def _short_error(err: BaseException) -> str:
    status = getattr(err, "status", None)
    reason = getattr(err, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(err).__name__}: {str(err)[:200]}"
