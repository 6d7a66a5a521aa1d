"""The circuit breaker's states with a clock the test controls (SPEC §4.7)."""

from __future__ import annotations

import pytest

from nz_proxy.breaker import BreakerState, CircuitBreaker
from nz_proxy.errors import UpstreamUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_half_opens_for_one_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=5, reset_s=30, clock=clock)
    for _ in range(4):
        assert breaker.before() is False
        breaker.failure()
    breaker.before()
    breaker.success()  # a success resets the count
    for _ in range(5):
        breaker.before()
        breaker.failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 10
    with pytest.raises(UpstreamUnavailable) as refused:
        breaker.before()
    assert refused.value.retry_after_ms == 20_000
    assert refused.value.headers() == {"Retry-After": "20", "retry-after-ms": "20000"}
    clock.now += 20
    assert breaker.before() is True  # the probe
    with pytest.raises(UpstreamUnavailable):
        breaker.before()  # only one probe at a time
    breaker.failure()
    assert breaker.state is BreakerState.OPEN  # the probe failed: open again, timer reset
    clock.now += 30
    assert breaker.before() is True
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.before() is False


def test_an_abandoned_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, reset_s=1, clock=clock)
    breaker.failure()
    clock.now += 1
    probe = breaker.before()
    breaker.abandoned(probe)
    assert breaker.before() is True
