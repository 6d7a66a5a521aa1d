"""The listing allowance: a limit of its own for the routes that describe models.

``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/version`` and ``/v1/models`` run no
model, yet front-ends call them on every page load (Open WebUI: two or three per
page, docs/OPEN_WEBUI.md). Counted against the key's ``rpm`` they would eat the
allowance its messages need, so they are not: each key has ``LISTING_RPM`` of them in
any 60 s instead, an exact sliding window (``nz_core.windows.check_window``) apart
from the request window of admission. The cap is generous and still there because
``/api/tags`` and ``/api/ps`` each cost the backend a call.

:class:`ListingLimit` admits or refuses (429 ``listing_rate_exceeded`` with
``Retry-After``); the window lives in Redis (:class:`RedisListingWindow`, one script
call, shared by every replica) or in the process (:class:`MemoryListingWindow`,
embedded mode).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from importlib.resources import files
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from nz_core.windows import REQUEST_WINDOW_MS, WindowCheck, check_window
from nz_proxy.admission.stores.pipelining import ScriptPipeline
from nz_proxy.errors import GatewayUnavailable, LimitExceeded

__all__ = ["ListingLimit", "ListingWindow", "MemoryListingWindow", "RedisListingWindow"]


class ListingWindow(Protocol):
    async def take(self, prefix: str, rid: str, limit: int) -> WindowCheck:
        """Count the call ``rid`` in ``prefix``'s window if it holds fewer than
        ``limit``; one round trip."""
        ...


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class MemoryListingWindow:
    """Embedded mode: the admission times of each key's listing calls, oldest first."""

    def __init__(self, clock: Callable[[], int] = _monotonic_ms) -> None:
        self.clock = clock
        self._calls: dict[str, deque[int]] = {}

    async def take(self, prefix: str, rid: str, limit: int) -> WindowCheck:
        now = self.clock()
        calls = self._calls.setdefault(prefix, deque())
        while calls and calls[0] <= now - REQUEST_WINDOW_MS:
            calls.popleft()
        check = check_window(calls, now, limit)
        if check.allowed:
            calls.append(now)
        return check


class RedisListingWindow:
    """Every replica's calls in one sorted set per key, ``gw:{prefix}:listing``."""

    def __init__(
        self,
        redis: Redis,
        *,
        clock: Callable[[], int] | None = None,
        deadline_s: float | None = None,
    ) -> None:
        source = files("nz_proxy.admission.stores").joinpath("listing.lua").read_text()
        self._script = redis.register_script(source)
        self._calls = ScriptPipeline(redis, deadline_s)
        # Tests pass a clock; production takes time from Redis, shared by all processes.
        self.clock = clock

    async def take(self, prefix: str, rid: str, limit: int) -> WindowCheck:
        now = "" if self.clock is None else str(self.clock())
        keys = [f"gw:{{{prefix}}}:listing"]
        allowed, used, remaining, retry, reset = (
            int(value) for value in await self._calls.run(self._script, keys, [rid, now, limit])
        )
        return WindowCheck(bool(allowed), used, remaining, retry, reset)


class ListingLimit:
    """``rpm`` listing calls per key per minute, whatever the key's own limits."""

    def __init__(self, window: ListingWindow, rpm: int) -> None:
        self.window = window
        self.rpm = rpm

    async def admit(self, prefix: str, rid: str) -> None:
        """Count one listing call, or refuse it (``LimitExceeded``; fail closed with
        ``GatewayUnavailable`` when Redis does not answer)."""
        try:
            check = await self.window.take(prefix, rid, self.rpm)
        except RedisError as exc:
            raise GatewayUnavailable(f"redis: {type(exc).__name__}") from None
        if not check.allowed:
            raise LimitExceeded(
                "listing_rate_exceeded",
                f"Model listing rate limit reached ({self.rpm} per minute).",
                retry_after_ms=check.retry_after_ms,
            )
