"""Shared limit state: one interface, two stores (SPEC §4.4, §9).

:class:`StateStore` is what admission needs from the outside world, in exactly one
round trip to admit and one to settle. :mod:`nz_proxy.admission.stores.redis` keeps the state in
Redis (Lua scripts, every key of one API key under one hash tag) so any number of
gateway processes share it; :mod:`nz_proxy.admission.stores.memory` keeps it in the process for
embedded mode. Both implement the reference model :class:`nz_core.limiter.KeyState`,
and one test suite holds them to it.

In production a reservation also carries a *journal*: the audit row of its request,
kept beside the reservation until the audit log has it. A gateway killed with
``kill -9`` loses its in-memory buffer, not those rows: :meth:`StateStore.reap` hands
them (and reservations whose lease ran out) to any other process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from nz_core.limiter import Ask, Decision

__all__ = ["JournalEntry", "Settled", "StateStore"]


class Settled(Enum):
    """What settlement found."""

    SETTLED = "settled"  # the reservation was replaced by the tokens used
    ABANDONED = "abandoned"  # its lease had run out: it stays counted as reserved
    UNKNOWN = "unknown"  # nothing to settle (the state was lost, e.g. Redis restarted)
    PENDING = "pending"  # the store did not answer: settled later, with the audit row


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """An audit row the store kept because its owner may be gone."""

    prefix: str
    rid: str
    abandoned: bool  # the request never settled; ``row`` is what admission knew
    row: bytes
    reserved: int = 0  # what an abandoned request holds


class StateStore(Protocol):
    @property
    def journals(self) -> bool:
        """Whether settlement keeps the audit row beside the reservation."""
        ...

    async def admit(self, prefix: str, ask: Ask, journal: bytes) -> Decision:
        """One round trip: check and, when admitted, record (SPEC §4.4)."""
        ...

    async def settle(
        self, prefix: str, ask: Ask, tokens: int, journal: bytes, admitted_ms: int | None = None
    ) -> Settled:
        """One round trip: replace ``ask``'s reservation by ``tokens``.

        When the reservation is gone because the store lost its state (``UNKNOWN``),
        ``tokens`` are added to the budget counters rebuilt after ``admitted_ms``
        (wall-clock ms): the rebuild cannot have counted a request still running."""
        ...

    async def renew(self, leases: Sequence[tuple[str, Ask]]) -> None:
        """Extend the leases of requests still running (long streams)."""
        ...

    async def ledger_epoch(self, prefix: str) -> str | None:
        """Read before a counter is rebuilt from the ledger: ``None`` while a row some
        process settled is not on the ledger yet (the rebuild would miss it), else the
        epoch to hand to :meth:`seed`."""
        ...

    async def seed(
        self, prefix: str, counter: str, tokens: int, ttl_ms: int, epoch: str | None = None
    ) -> bool:
        """Set a budget counter that is unknown (rebuilt from the ledger); a known one
        wins. False when ``epoch`` (from :meth:`ledger_epoch`, read before the ledger)
        is stale: a row landed on the ledger meanwhile, so read it again. ``None``
        checks nothing (a counter set by hand)."""
        ...

    async def reap(self, grace_ms: int) -> list[JournalEntry]:
        """Journal entries whose owner seems gone: abandoned reservations, and settled
        rows not released within ``grace_ms``."""
        ...

    async def release(self, entries: Sequence[tuple[str, str]]) -> None:
        """Forget journal entries (prefix, rid) once the audit log has them."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
