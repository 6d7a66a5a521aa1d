"""The in-process state store, for embedded mode (one process, SQLite).

It runs the admission algorithm itself, :class:`nz_core.limiter.KeyState`, one per API
key. Time is the process's monotonic clock, so a wall-clock jump cannot reorder the
request window. There is no journal: a process that dies takes its state with it, and
the SQLite ledger is the truth it starts from again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from nz_core.limiter import Ask, Decision, KeyState
from nz_proxy.admission.stores import JournalEntry, Settled

__all__ = ["MemoryStore"]


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class MemoryStore:
    journals = False  # one process: its state dies with it

    def __init__(self, clock: Callable[[], int] = monotonic_ms) -> None:
        self.clock = clock
        self._keys: dict[str, KeyState] = {}

    def _key(self, prefix: str) -> KeyState:
        state = self._keys.get(prefix)
        if state is None:
            state = self._keys[prefix] = KeyState()
        return state

    async def admit(self, prefix: str, ask: Ask, journal: bytes) -> Decision:
        return self._key(prefix).admit(ask, self.clock())

    async def settle(
        self, prefix: str, ask: Ask, tokens: int, journal: bytes, admitted_ms: int | None = None
    ) -> Settled:
        # In-process state lives as long as the requests it admitted: never lost under
        # them, so ``admitted_ms`` is never needed.
        counts_tokens = ask.limits.tpm is not None
        settled = self._key(prefix).settle(
            ask.rid, tokens, self.clock(), counts_tokens=counts_tokens
        )
        return Settled.SETTLED if settled else Settled.UNKNOWN

    async def renew(self, leases: Sequence[tuple[str, Ask]]) -> None:
        now = self.clock()
        for prefix, ask in leases:
            self._key(prefix).renew(ask.rid, now, ask.lease_ms)

    async def ledger_epoch(self, prefix: str) -> str | None:
        return ""  # one process: its own rows are all the rebuild has to count

    async def seed(
        self, prefix: str, counter: str, tokens: int, ttl_ms: int, epoch: str | None = None
    ) -> bool:
        self._key(prefix).seed(counter, tokens)
        return True

    async def reap(self, grace_ms: int) -> list[JournalEntry]:
        # One process, no journal: a reservation outlives its lease only if its request
        # task leaked. It then stays counted as reserved (SPEC §4.4) and is forgotten.
        now = self.clock()
        for state in self._keys.values():
            state.forget_lapsed(now, grace_ms)
        return []

    async def release(self, entries: Sequence[tuple[str, str]]) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
