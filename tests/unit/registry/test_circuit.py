"""The per-registry circuit breaker and Retry-After back-off."""

from __future__ import annotations

import pytest

from app.registry.circuit import CircuitBreaker, CircuitState
from app.registry.errors import CircuitOpen, RateLimited
from app.registry.metrics import RegistryObserver
from tests.unit.registry.test_fakes import FakeClock


class States(RegistryObserver):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_circuit(self, *, registry: str, state: str) -> None:
        self.seen.append(state)


def breaker(clock: FakeClock, states: States | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        "r",
        failure_threshold=3,
        open_seconds=30,
        max_retry_after=120,
        clock=clock,
        observer=states or States(),
    )


def test_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    circuit = breaker(clock)
    circuit.failure()
    circuit.failure()
    circuit.success()  # resets the count
    circuit.failure()
    circuit.failure()
    circuit.check()
    circuit.failure()
    assert circuit.state is CircuitState.OPEN
    with pytest.raises(CircuitOpen) as err:
        circuit.check()
    assert err.value.reason == "registry unavailable (recent failures; retry in 30 s)"


def test_half_open_lets_one_probe_through() -> None:
    clock = FakeClock()
    states = States()
    circuit = breaker(clock, states)
    for _ in range(3):
        circuit.failure()
    clock.advance(31)
    circuit.check()  # the probe
    assert circuit.state is CircuitState.HALF_OPEN
    with pytest.raises(CircuitOpen):
        circuit.check()  # others wait for the probe
    circuit.success()
    circuit.check()
    assert states.seen == ["open", "half-open", "closed"]


def test_failed_probe_opens_again_and_a_lost_probe_is_replaced() -> None:
    clock = FakeClock()
    circuit = breaker(clock)
    for _ in range(3):
        circuit.failure()
    clock.advance(31)
    circuit.check()
    circuit.failure()
    assert circuit.state is CircuitState.OPEN
    clock.advance(31)
    circuit.check()  # a probe that never reports back (cancelled)...
    clock.advance(31)
    circuit.check()  # ...is replaced after open_seconds


def test_rate_limit_honours_retry_after_with_a_cap() -> None:
    clock = FakeClock()
    circuit = breaker(clock)
    circuit.rate_limited(20)
    with pytest.raises(RateLimited) as err:
        circuit.check()
    assert err.value.reason == "registry rate-limited; retry in 20 s"
    clock.advance(21)
    circuit.check()
    circuit.success()
    circuit.rate_limited(10_000)
    clock.advance(119)
    with pytest.raises(RateLimited):
        circuit.check()
    clock.advance(2)
    circuit.check()


def test_rate_limit_without_retry_after_uses_open_seconds() -> None:
    clock = FakeClock()
    circuit = breaker(clock)
    circuit.rate_limited(None)
    clock.advance(29)
    with pytest.raises(RateLimited):
        circuit.check()
    clock.advance(2)
    circuit.check()
