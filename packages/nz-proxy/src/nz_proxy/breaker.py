"""The circuit breaker in front of the backend (SPEC §4.7).

Closed: requests flow and consecutive failures (connect error, timeout, 5xx) are
counted. After ``failures`` of them it opens: requests get 502 with ``Retry-After``
without touching the backend. After ``reset_s`` it half-opens and lets one probe
through; the probe's outcome closes it or opens it again. State is per process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from nz_proxy.errors import UpstreamUnavailable

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(Enum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(
        self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._probing = False

    def before(self) -> bool:
        """Ask to send a request. Returns whether it is the half-open probe.

        Raises:
            UpstreamUnavailable: the circuit is open (or a probe is already out).
        """
        if self.state is BreakerState.CLOSED:
            return False
        now = self.clock()
        if self.state is BreakerState.OPEN:
            waited = now - self.opened_at
            if waited < self.reset_s:
                raise UpstreamUnavailable(retry_after_ms=int((self.reset_s - waited) * 1000))
            self.state = BreakerState.HALF_OPEN
        if self._probing:
            raise UpstreamUnavailable(retry_after_ms=1000)
        self._probing = True
        return True

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._probing = False

    def failure(self) -> None:
        self._probing = False
        if self.state is BreakerState.HALF_OPEN:
            self._open()
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.threshold:
            self._open()

    def abandoned(self, probe: bool) -> None:
        """The request ended without telling (the client left): free the probe slot."""
        if probe:
            self._probing = False

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = self.clock()
