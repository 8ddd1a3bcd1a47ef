"""TtlCache: hits, per-value TTL, LRU eviction, single-flight, stale-on-error, no error caching."""

from __future__ import annotations

import asyncio

import pytest

from app.registry.cache import TtlCache
from app.registry.errors import RegistryUnavailable
from app.registry.metrics import RegistryObserver
from app.registry.singleflight import SingleFlight
from tests.unit.registry.test_fakes import FakeClock


class Events(RegistryObserver):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_cache(self, *, cache: str, event: str) -> None:
        self.seen.append(event)


def loader(value: str, calls: list[str]):  # type: ignore[no-untyped-def]
    async def load() -> str:
        calls.append(value)
        await asyncio.sleep(0)
        return value

    return load


async def test_hit_after_miss_until_ttl_passes() -> None:
    clock = FakeClock()
    events = Events()
    cache: TtlCache[str, str] = TtlCache("t", max_entries=10, clock=clock, observer=events)
    calls: list[str] = []
    assert await cache.get_or_load("k", loader("a", calls), ttl=lambda _: 10) == "a"
    assert await cache.get_or_load("k", loader("b", calls), ttl=lambda _: 10) == "a"
    clock.advance(10)
    assert await cache.get_or_load("k", loader("c", calls), ttl=lambda _: 10) == "c"
    assert calls == ["a", "c"]
    assert events.seen == ["miss", "hit", "miss"]
    assert (cache.stats.hits, cache.stats.misses) == (1, 2)


async def test_ttl_is_chosen_per_value_and_zero_stores_nothing() -> None:
    clock = FakeClock()
    cache: TtlCache[str, str] = TtlCache("t", max_entries=10, clock=clock)
    ttl = {"found": 86400.0, "none": 60.0, "skip": 0.0}.__getitem__
    await cache.get_or_load("a", loader("found", []), ttl=ttl)
    await cache.get_or_load("b", loader("none", []), ttl=ttl)
    await cache.get_or_load("c", loader("skip", []), ttl=ttl)
    clock.advance(61)
    assert cache.get("a") == "found"
    assert cache.get("b") is None
    assert cache.get("c") is None


async def test_lru_eviction_counts() -> None:
    events = Events()
    cache: TtlCache[str, str] = TtlCache("t", max_entries=2, observer=events)
    for key in ("a", "b"):
        cache.put(key, key, 100)
    assert await cache.get_or_load("a", loader("x", []), ttl=lambda _: 100) == "a"  # a is recent
    cache.put("c", "c", 100)
    assert cache.get("b") is None and cache.get("a") == "a" and cache.get("c") == "c"
    assert cache.stats.evictions == 1 and "eviction" in events.seen
    assert len(cache) == 2


async def test_concurrent_loads_of_one_key_share_one_call() -> None:
    cache: TtlCache[str, str] = TtlCache("t", max_entries=10)
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return "v"

    values = await asyncio.gather(
        *(cache.get_or_load("k", load, ttl=lambda _: 5) for _ in range(50))
    )
    assert values == ["v"] * 50 and calls == 1


async def test_cancelled_waiter_does_not_cancel_the_load() -> None:
    cache: TtlCache[str, str] = TtlCache("t", max_entries=10)
    done = asyncio.Event()

    async def load() -> str:
        await asyncio.sleep(0.05)
        done.set()
        return "v"

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(cache.get_or_load("k", load, ttl=lambda _: 5), 0.01)
    await asyncio.wait_for(done.wait(), 1)
    await asyncio.sleep(0)
    assert cache.get("k") == "v"


async def test_errors_are_not_cached() -> None:
    cache: TtlCache[str, str] = TtlCache("t", max_entries=10)
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RegistryUnavailable("r")
        return "ok"

    with pytest.raises(RegistryUnavailable):
        await cache.get_or_load("k", flaky, ttl=lambda _: 5)
    assert await cache.get_or_load("k", flaky, ttl=lambda _: 5) == "ok"


async def test_stale_entry_answers_while_the_registry_fails_within_the_window() -> None:
    clock = FakeClock()
    events = Events()
    cache: TtlCache[str, str] = TtlCache(
        "t", max_entries=10, stale_seconds=100, clock=clock, observer=events
    )

    async def failing() -> str:
        raise RegistryUnavailable("r")

    cache.put("k", "old", 10)
    clock.advance(50)
    assert await cache.get_or_load("k", failing, ttl=lambda _: 10) == "old"
    assert cache.stats.stale == 1 and events.seen[-1] == "stale"
    clock.advance(100)
    with pytest.raises(RegistryUnavailable):
        await cache.get_or_load("k", failing, ttl=lambda _: 10)


async def test_non_registry_errors_are_not_hidden_by_stale_entries() -> None:
    clock = FakeClock()
    cache: TtlCache[str, str] = TtlCache("t", max_entries=10, stale_seconds=100, clock=clock)
    cache.put("k", "old", 1)
    clock.advance(2)

    async def bug() -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await cache.get_or_load("k", bug, ttl=lambda _: 1)


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        TtlCache("t", max_entries=0)


async def test_singleflight_aclose_cancels_running_work() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    started = asyncio.Event()

    async def forever() -> str:
        started.set()
        await asyncio.sleep(3600)
        return "never"

    waiter = asyncio.create_task(flights.run("k", forever))
    await started.wait()
    assert len(flights) == 1
    await flights.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(flights) == 0
