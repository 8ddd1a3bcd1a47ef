"""List + watch of one Kubernetes resource kind, run in a thread, delivering raw JSON dicts.

This is the I/O edge of the node inventory. It uses the official `kubernetes` client for
configuration, authentication and the HTTP requests (`list_node`, `list_runtime_class`, ...),
but asks for the undecoded response (`_preload_content=False`) and parses the JSON itself:
the client's model classes would cost seconds for thousands of nodes, and holding the raw
response lets `interrupt()` shut its socket so that `stop` takes effect at once instead of at
the end of a long watch.

The loop, like client-go's reflector:

1. list (paginated, `limit`) -> `on_replace(items)`, remember `metadata.resourceVersion`;
2. watch from that resourceVersion with bookmarks and a server-side timeout; each event ->
   `on_event(type, object)`; when the watch ends, watch again from the last resourceVersion;
3. 410 Gone (the resourceVersion is too old; as HTTP status or as an ERROR event) -> list again
   at once; every `resync_seconds` -> list again anyway (replaces everything, heals drift);
4. any other failure -> wait with exponential backoff and jitter, then resume (watch from
   the last resourceVersion, or list when there is none); the backoff starts again from its
   first step when the API had answered since the last failure. The consumer keeps what it
   had.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

ListFn = Callable[..., Any]  # a kubernetes client list_* method
OnReplace = Callable[[list[Mapping[str, Any]]], None]
OnEvent = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class ReflectorSettings:
    resync_seconds: float = 300.0
    # Server-side watch timeout: a watch ends (and restarts from its resourceVersion) at least
    # this often. A connection that dies silently is noticed by the client's read timeout, set
    # 30 s past this (the server's own end of a quiet watch must not look like a failure).
    watch_timeout_seconds: int = 30
    page_size: int = 500
    connect_timeout: float = 5.0
    list_read_timeout: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


class Gone(Exception):
    """The resourceVersion is too old (410): list again."""


class WatchError(Exception):
    """The watch stream carried an ERROR event other than 410."""


def _status_code(err: BaseException) -> int | None:
    status = getattr(err, "status", None)
    return status if isinstance(status, int) else None


def iter_lines(response: Any) -> Iterator[bytes]:
    """Newline-separated JSON documents of a watch response, as they arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line for line in complete if line.strip())
    if buffer.strip():
        yield buffer


class Reflector:
    """Keeps a consumer in step with one resource kind. `run` is a thread's target."""

    def __init__(
        self,
        kind: str,
        list_fn: ListFn,
        *,
        on_replace: OnReplace,
        on_event: OnEvent,
        stop: threading.Event,
        settings: ReflectorSettings | None = None,
    ) -> None:
        self.kind = kind
        self._list_fn = list_fn
        self._on_replace = on_replace
        self._on_event = on_event
        self._stop = stop
        self._settings = settings or ReflectorSettings()
        self._lock = threading.Lock()
        self._response: Any = None  # the response being read, for interrupt()
        self.synced = False  # True after the first full list
        self.last_contact = 0.0  # time.monotonic() of the last successful list/event/watch end
        self.last_error = ""
        self.resource_version: str | None = None

    # ---- control ----------------------------------------------------------------------------

    def run(self) -> None:
        settings = self._settings
        delay = settings.backoff_initial
        listed_at = 0.0
        while not self._stop.is_set():
            heard = self.last_contact
            try:
                if self.resource_version is None or (
                    time.monotonic() - listed_at >= settings.resync_seconds
                ):
                    self._list()
                    listed_at = time.monotonic()
                started = time.monotonic()
                events = self._watch()
                if events == 0 and time.monotonic() - started < 1.0:
                    # the server ended an empty watch at once: don't spin
                    self._stop.wait(delay)
                    delay = min(delay * 2, settings.backoff_max)
                else:
                    delay = settings.backoff_initial
            except Gone:
                logger.info("%s: resourceVersion expired; listing again", self.kind)
                self.resource_version = None
            except Exception as err:
                if self._stop.is_set():
                    break
                if _status_code(err) == 410:
                    self.resource_version = None
                    continue
                self.last_error = f"{type(err).__name__}: {err}"
                if self.last_contact > heard:
                    # The API answered during this attempt (a list, a watch that connected):
                    # a new failure, not the outage that grew the backoff. (An API that accepts
                    # every watch and drops it at once is retried every backoff_initial.)
                    delay = settings.backoff_initial
                pause = delay * random.uniform(0.8, 1.2)
                logger.warning(
                    "%s: list/watch failed (%s); keeping the last inventory, retrying in %.1fs",
                    self.kind,
                    self.last_error,
                    pause,
                )
                self._stop.wait(pause)
                delay = min(delay * 2, settings.backoff_max)
        logger.debug("%s: reflector stopped", self.kind)

    def interrupt(self) -> None:
        """Unblocks a read in progress (call after setting the stop event)."""
        with self._lock:
            response = self._response
        _shut_down(response)

    # ---- list and watch ---------------------------------------------------------------------

    def _call(self, **kwargs: Any) -> Any:
        response = self._list_fn(_preload_content=False, **kwargs)
        with self._lock:
            self._response = response
        if self._stop.is_set():
            # stop() came while this call was being made: its interrupt() found no response
            # to cut, and a quiet watch would otherwise hold the thread until its timeout.
            _shut_down(response)
        return response

    def _release(self, response: Any) -> None:
        with self._lock:
            self._response = None
        try:
            response.release_conn()
        except Exception:  # closing a broken connection may fail; nothing to do
            logger.debug("%s: release_conn failed", self.kind, exc_info=True)

    def _list(self) -> None:
        settings = self._settings
        items: list[Mapping[str, Any]] = []
        token: str | None = None
        while True:
            response = self._call(
                limit=settings.page_size,
                _continue=token,
                _request_timeout=(settings.connect_timeout, settings.list_read_timeout),
            )
            try:
                body = json.loads(response.data)
            finally:
                self._release(response)
            items.extend(i for i in body.get("items") or () if isinstance(i, Mapping))
            metadata = body.get("metadata") or {}
            token = metadata.get("continue") or None
            if token is None:
                break
        if self._stop.is_set():
            return
        self._on_replace(items)
        self.resource_version = str(metadata.get("resourceVersion") or "") or None
        self.synced = True
        self.last_contact = time.monotonic()
        self.last_error = ""
        logger.info(
            "%s: listed %d at resourceVersion %s", self.kind, len(items), self.resource_version
        )

    def _watch(self) -> int:
        """Watches from `resource_version` until the server ends the watch; returns the number
        of events seen. Raises Gone on 410."""
        settings = self._settings
        response = self._call(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=settings.watch_timeout_seconds,
            # client-side backstop for a connection that dies without a FIN
            _request_timeout=(settings.connect_timeout, settings.watch_timeout_seconds + 30),
        )
        self.last_contact = time.monotonic()  # the watch was accepted
        events = 0
        try:
            for line in iter_lines(response):
                if self._stop.is_set():
                    return events
                self._handle(json.loads(line))
                events += 1
        finally:
            self._release(response)
        if not self._stop.is_set():
            self.last_contact = time.monotonic()
        return events

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        obj = obj if isinstance(obj, Mapping) else {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message", ""))
            raise WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        metadata = obj.get("metadata") or {}
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._on_event(str(kind), obj)
        version = metadata.get("resourceVersion")
        if version:
            self.resource_version = str(version)
        self.last_contact = time.monotonic()


def _shut_down(response: Any) -> None:
    """Shuts the socket under a urllib3 response down, so a blocked read returns."""
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


def start_threads(reflectors: Iterable[Reflector]) -> list[threading.Thread]:
    """One daemon thread per reflector (named after its kind), started."""
    threads = []
    for reflector in reflectors:
        thread = threading.Thread(
            target=reflector.run, name=f"streamgate-watch-{reflector.kind}", daemon=True
        )
        thread.start()
        threads.append(thread)
    return threads


def stop_threads(
    stop: threading.Event,
    reflectors: Iterable[Reflector],
    threads: Iterable[threading.Thread],
    timeout: float,
) -> None:
    """Stops the reflectors sharing `stop` and joins their threads within about `timeout`."""
    stop.set()
    for reflector in reflectors:
        reflector.interrupt()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning("%s did not stop within %.1fs", thread.name, timeout)
