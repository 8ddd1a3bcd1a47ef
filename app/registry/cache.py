"""An async in-memory cache with a time to live per entry, a size bound and single-flight loads.

- A fresh entry answers at once (`hit`). A missing or expired one is loaded; concurrent
  callers for one key share one load (`SingleFlight`).
- The time to live is chosen per value (`ttl(value)`), so "artifact found" can live for a day
  and "none yet" for a minute. A ttl <= 0 stores nothing.
- Errors are never stored. When a load fails with a `RegistryError` and an expired entry is
  no older than `stale_seconds` past its expiry, that entry answers (`stale`) instead.
- At most `max_entries` entries; the least recently used goes first (`eviction`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.registry.errors import RegistryError
from app.registry.metrics import NULL_OBSERVER, RegistryObserver
from app.registry.singleflight import SingleFlight

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    expires_at: float


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    stale: int = 0
    evictions: int = 0


class TtlCache(Generic[K, V]):
    """See the module docstring. `name` labels metrics and logs."""

    def __init__(
        self,
        name: str,
        *,
        max_entries: int,
        stale_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        observer: RegistryObserver = NULL_OBSERVER,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.name = name
        self.stats = CacheStats()
        self._max = max_entries
        self._stale = stale_seconds
        self._clock = clock
        self._observer = observer
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        # Bumped whenever an entry is stored or dropped before it expires: whoever keeps an
        # answer derived from entries (the verdict memo) knows it still holds while this and
        # the entries' expiry say so.
        self.writes = 0
        self._flights: SingleFlight[K, V] = SingleFlight()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, *, allow_stale: bool = False) -> V | None:
        """The fresh value for `key` (or, with `allow_stale`, one expired no longer than
        `stale_seconds` ago), else None; counts nothing."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        late = self._clock() - entry.expires_at
        if late < 0 or (allow_stale and late <= self._stale):
            return entry.value
        return None

    def hit(self, key: K) -> V | None:
        """The fresh value for `key`, counted as a hit and kept recent; None otherwise, counted
        as nothing (the look-up that follows counts its own miss)."""
        found = self.hit_until(key)
        return None if found is None else found[0]

    def hit_until(self, key: K) -> tuple[V, float] | None:
        """`hit`, with the clock time at which the value expires."""
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= self._clock():
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        self._observer.on_cache(cache=self.name, event="hit")
        return entry.value, entry.expires_at

    def put(self, key: K, value: V, ttl: float) -> None:
        if ttl <= 0:
            return
        self.writes += 1
        self._entries[key] = _Entry(value, self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self.stats.evictions += 1
            self._observer.on_cache(cache=self.name, event="eviction")

    def invalidate(self, key: K) -> None:
        if self._entries.pop(key, None) is not None:
            self.writes += 1

    async def get_or_load(
        self, key: K, load: Callable[[], Awaitable[V]], *, ttl: Callable[[V], float]
    ) -> V:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at > self._clock():
            self._entries.move_to_end(key)
            self.stats.hits += 1
            self._observer.on_cache(cache=self.name, event="hit")
            return entry.value
        self.stats.misses += 1
        self._observer.on_cache(cache=self.name, event="miss")

        async def load_and_store() -> V:
            value = await load()
            self.put(key, value, ttl(value))
            return value

        try:
            return await self._flights.run(key, load_and_store)
        except RegistryError as err:
            stale = self._entries.get(key)
            if stale is None or self._clock() - stale.expires_at > self._stale:
                raise
            self.stats.stale += 1
            self._observer.on_cache(cache=self.name, event="stale")
            logger.info("%s cache: answering %r from a stale entry: %s", self.name, key, err)
            return stale.value

    async def aclose(self) -> None:
        await self._flights.aclose()
