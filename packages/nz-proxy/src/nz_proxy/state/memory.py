"""The in-process state store, for embedded mode (one process, SQLite).

Same decisions as :class:`nz_core.limiter.KeyState`, with structures that stay cheap at
any limit: the request window is a deque in arrival order, the token window a handful of
buckets. Time is the process's monotonic clock, so a wall-clock jump cannot reorder the
window. There is no journal: a process that dies takes its state with it, and the
SQLite ledger is the truth it starts from again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nz_core.budgets import Period, PeriodState
from nz_core.limiter import (
    Ask,
    BlockedBy,
    Decision,
    Reservation,
    plan_reservation,
    uncounted,
)
from nz_core.windows import (
    REQUEST_WINDOW_MS,
    TOKEN_BUCKET_MS,
    TOKEN_WINDOW_BUCKETS,
    WindowCheck,
    token_bucket,
)
from nz_proxy.state import JournalEntry, Settled

__all__ = ["MemoryStore"]


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass
class _Key:
    admitted_at: deque[int] = field(default_factory=deque)
    buckets: dict[int, int] = field(default_factory=dict)
    leases: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    pending: dict[str, Reservation] = field(default_factory=dict)


class MemoryStore:
    journals = False  # one process: its state dies with it

    def __init__(self, clock: Callable[[], int] = monotonic_ms) -> None:
        self.clock = clock
        self._keys: dict[str, _Key] = {}

    def _key(self, prefix: str) -> _Key:
        state = self._keys.get(prefix)
        if state is None:
            state = self._keys[prefix] = _Key()
        return state

    async def admit(self, prefix: str, ask: Ask, journal: bytes) -> Decision:
        return self.admit_now(prefix, ask, self.clock())

    def admit_now(self, prefix: str, ask: Ask, now: int) -> Decision:
        state = self._key(prefix)
        limits = ask.limits
        requests = None
        window = state.admitted_at
        while window and window[0] <= now - REQUEST_WINDOW_MS:
            window.popleft()
        if limits.rpm is not None:
            used = len(window)
            reset = (window[0] if window else now) + REQUEST_WINDOW_MS - now
            if used >= limits.rpm:
                wait = max(1, window[used - limits.rpm] + REQUEST_WINDOW_MS - now)
                check = WindowCheck(False, used, 0, wait, reset)
                return Decision(False, "rpm", wait, requests=check)
            requests = WindowCheck(True, used, limits.rpm - used - 1, 0, reset)
        counters = state.counters
        missing = tuple(b for b in ask.budgets if b.counter not in counters)
        if missing:
            return Decision(False, missing=missing)
        states = tuple(PeriodState(b.period, b.limit, counters[b.counter]) for b in ask.budgets)
        current = token_bucket(now)
        tokens = self._tokens(state, current, now, limits.tpm) if limits.tpm is not None else None

        def refuse(reason: str, wait: int | None, blocking: Period | None = None) -> Decision:
            return Decision(
                False,
                reason,
                wait,
                blocking,
                requests=uncounted(requests),
                tokens=tokens,
                budget_states=states,
            )

        if ask.inference:
            if limits.concurrent is not None:
                live = [e for e in state.leases.values() if e > now]
                if len(live) >= limits.concurrent:
                    return refuse("concurrency", max(1, min(1000, min(live) - now)))
            if tokens is not None and not tokens.allowed:
                return refuse("tpm", tokens.retry_after_ms)
        cap: int | None = None
        reserved = 0
        if ask.reserves:
            plan = plan_reservation(ask, states)
            if isinstance(plan, BlockedBy):
                return refuse("budget", None, plan.period)
            cap, reserved = plan
        if limits.rpm is not None:
            window.append(now)
        if ask.inference:
            state.leases[ask.rid] = now + ask.lease_ms
            if limits.tpm is not None and reserved:
                state.buckets[current] = state.buckets.get(current, 0) + reserved
            for line in ask.budgets:
                counters[line.counter] += reserved
            state.pending[ask.rid] = Reservation(
                reserved, current, tuple(b.counter for b in ask.budgets)
            )
        after = tuple(PeriodState(b.period, b.limit, counters[b.counter]) for b in ask.budgets)
        return Decision(
            True, cap=cap, reserved=reserved, requests=requests, tokens=tokens, budget_states=after
        )

    @staticmethod
    def _tokens(state: _Key, current: int, now: int, limit: int) -> WindowCheck:
        oldest_live = current - TOKEN_WINDOW_BUCKETS + 1
        for bucket in [b for b in state.buckets if b < oldest_live]:
            del state.buckets[bucket]
        live = sorted((b, v) for b, v in state.buckets.items() if b <= current and v > 0)
        used = sum(v for _, v in live)
        reset = ((live[0][0] if live else current) + TOKEN_WINDOW_BUCKETS) * TOKEN_BUCKET_MS - now
        if used < limit:
            return WindowCheck(True, used, limit - used, 0, reset)
        left = used
        for bucket, count in live:
            left -= count
            if left < limit:
                wait = max(1, (bucket + TOKEN_WINDOW_BUCKETS) * TOKEN_BUCKET_MS - now)
                return WindowCheck(False, used, 0, wait, reset)
        raise AssertionError("unreachable: the window empties after its last bucket")

    async def settle(
        self, prefix: str, ask: Ask, tokens: int, journal: bytes, admitted_ms: int | None = None
    ) -> Settled:
        # In-process state lives as long as the requests it admitted: never lost under
        # them, so ``admitted_ms`` is never needed.
        return self.settle_now(prefix, ask, tokens, self.clock())

    def settle_now(self, prefix: str, ask: Ask, tokens: int, now: int) -> Settled:
        state = self._key(prefix)
        state.leases.pop(ask.rid, None)
        reservation = state.pending.pop(ask.rid, None)
        if reservation is None:
            return Settled.UNKNOWN
        delta = tokens - reservation.reserved
        for counter in reservation.counters:
            if counter in state.counters:
                state.counters[counter] = max(0, state.counters[counter] + delta)
        if ask.limits.tpm is not None:
            left = state.buckets.get(reservation.bucket, 0) - reservation.reserved
            if left > 0:
                state.buckets[reservation.bucket] = left
            else:
                state.buckets.pop(reservation.bucket, None)
            if tokens:
                current = token_bucket(now)
                state.buckets[current] = state.buckets.get(current, 0) + tokens
        return Settled.SETTLED

    async def renew(self, leases: Sequence[tuple[str, Ask]]) -> None:
        now = self.clock()
        for prefix, ask in leases:
            state = self._key(prefix)
            if state.leases.get(ask.rid, now) > now:  # an expired lease stays expired
                state.leases[ask.rid] = now + ask.lease_ms

    async def seed(self, prefix: str, counter: str, tokens: int, ttl_ms: int) -> None:
        self._key(prefix).counters.setdefault(counter, tokens)

    async def reap(self, grace_ms: int) -> list[JournalEntry]:
        # One process, no journal: a reservation outlives its lease only if its request
        # task leaked. It then stays counted as reserved (SPEC §4.4) and is forgotten.
        now = self.clock()
        for state in self._keys.values():
            for rid in [r for r, expiry in state.leases.items() if expiry <= now - grace_ms]:
                del state.leases[rid]
                state.pending.pop(rid, None)
        return []

    async def release(self, entries: Sequence[tuple[str, str]]) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
