"""A circuit breaker per registry, which also honours HTTP 429 `Retry-After`.

closed ──N failures in a row──▶ open ──after open_seconds──▶ half-open ──probe ok──▶ closed
                                  ▲                             │
                                  └────────probe failed─────────┘

While open, `check()` raises `CircuitOpen` (or `RateLimited` after a 429) at once, so a
failing registry costs no time inside the admission deadline. Half-open lets one probe through;
the others fail fast until it reports back (or until it has been out for `open_seconds`, in
case it was cancelled and never reports). Failures are timeouts, connection errors, 5xx and
429; bad answers and auth errors are the image's or the configuration's problem, not the
registry's availability, and do not count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum

from app.registry.errors import CircuitOpen, RateLimited
from app.registry.metrics import NULL_OBSERVER, RegistryObserver

logger = logging.getLogger(__name__)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        registry: str,
        *,
        failure_threshold: int = 5,
        open_seconds: float = 30.0,
        max_retry_after: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        observer: RegistryObserver = NULL_OBSERVER,
    ) -> None:
        self.registry = registry
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._max_retry_after = max_retry_after
        self._clock = clock
        self._observer = observer
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._rate_limited = False
        self._probe_since: float | None = None

    @property
    def state(self) -> CircuitState:
        return self._state

    def _set(self, state: CircuitState) -> None:
        if state is not self._state:
            logger.info("registry %s circuit %s -> %s", self.registry, self._state, state)
            self._state = state
            self._observer.on_circuit(registry=self.registry, state=str(state))

    def check(self) -> None:
        """Raise when the registry must not be asked now; otherwise let the request go."""
        now = self._clock()
        if self._state is CircuitState.CLOSED:
            return
        if now < self._open_until:
            if self._rate_limited:
                raise RateLimited(self.registry, self._open_until - now, "still backing off")
            raise CircuitOpen(self.registry, self._open_until - now)
        if self._probe_since is not None and now - self._probe_since < self._open_seconds:
            raise CircuitOpen(self.registry, 1.0, "a probe request is under way")
        self._set(CircuitState.HALF_OPEN)
        self._probe_since = now

    def success(self) -> None:
        self._failures = 0
        self._probe_since = None
        self._rate_limited = False
        self._set(CircuitState.CLOSED)

    def failure(self) -> None:
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or self._failures >= self._threshold:
            self._open(self._open_seconds, rate_limited=False)

    def rate_limited(self, retry_after: float | None) -> None:
        seconds = self._open_seconds if retry_after is None else retry_after
        self._open(min(self._max_retry_after, max(0.0, seconds)), rate_limited=True)

    def _open(self, seconds: float, *, rate_limited: bool) -> None:
        self._open_until = self._clock() + seconds
        self._rate_limited = rate_limited
        self._probe_since = None
        self._set(CircuitState.OPEN)
