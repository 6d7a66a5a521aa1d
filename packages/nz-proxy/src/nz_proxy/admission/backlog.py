"""Settlements owed to the state store: taken when Redis could not be reached, replayed
when it answers again (SPEC §4.4, §4.8).

A request that ended during a Redis outage has been served; its reservation is still on
the counters, and the counters may be anything by the time Redis is back. What the
audit row must say depends on what Redis then reports, so the row waits here with the
settlement, and is recorded once the outcome is known:

* ``SETTLED``: Redis kept its state; the reservation became the tokens used.
* ``ABANDONED``: the lease ran out meanwhile and a reaper audited the request at its
  reservation; the row says the same (writes are idempotent, so it lands once).
* ``UNKNOWN``: Redis came back empty. A counter rebuilt from the ledger since took the
  tokens in the settlement itself; one not rebuilt yet will count the row, which goes
  to the audit buffer before anything else can run.

:class:`Gate` keeps counter rebuilds and settlements apart in one process: a rebuild
reads the ledger and the audit buffer, and must not miss a row whose settlement found
no counter to add to.

Rows waiting here are lost only if this process dies before Redis returns *and* Redis
loses its journal; either alone leaves a copy (this backlog, or the journal entry the
reaper audits).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import msgspec
import structlog
from redis.exceptions import RedisError

from nz_core.limiter import Ask
from nz_proxy.admission.stores import Settled, StateStore
from nz_proxy.audit import AuditRow, AuditWriter, decode_row

__all__ = ["Backlog", "Gate", "Owed"]

log = structlog.get_logger("nz_proxy.admission.backlog")

REPLAY_INTERVAL_S: Final = 0.5
# Cancellations are kept up to this many: each is a timed-out admission, and a long
# outage must not grow the process without bound (past it, a ghost reservation is
# settled by its lease running out: an over-count, never an overspend).
MAX_CANCELS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Owed:
    """One settlement the store did not take."""

    prefix: str
    ask: Ask
    tokens: int  # used, as it will be settled
    reserved: int  # held since admission
    journal: bytes  # the finished audit row (b"": none, the request was refused)
    admitted_ms: int


class Gate:
    """Settlements run side by side; a counter rebuild waits for those in flight and
    holds new ones back until it has written the counter.

    ``async with gate:`` is a settlement (a plain class, not a generator: every request
    passes through it); ``async with gate.rebuild():`` is a rebuild.
    """

    def __init__(self) -> None:
        self._settling = 0
        self._quiet = asyncio.Event()  # no settlement in flight
        self._quiet.set()
        self._open = asyncio.Event()  # no rebuild in progress
        self._open.set()
        self._rebuild = asyncio.Lock()

    async def __aenter__(self) -> None:
        while not self._open.is_set():
            await self._open.wait()
        self._settling += 1
        self._quiet.clear()

    async def __aexit__(self, *_: object) -> None:
        self._settling -= 1
        if not self._settling:
            self._quiet.set()

    @asynccontextmanager
    async def rebuild(self) -> AsyncIterator[None]:
        async with self._rebuild:
            self._open.clear()
            try:
                await self._quiet.wait()
                yield
            finally:
                self._open.set()


class Backlog:
    def __init__(self, store: StateStore, audit: AuditWriter, gate: Gate) -> None:
        self.store = store
        self.audit = audit
        self.gate = gate
        self._owed: dict[str, tuple[Owed, AuditRow | None]] = {}  # rid → (settlement, row)
        self._cancels = 0  # of them, cancelled admissions (no row)

    def __len__(self) -> int:
        return len(self._owed)

    def add(self, owed: Owed) -> None:
        row = decode_row(owed.journal) if owed.journal else None
        self._owed[owed.ask.rid] = (owed, row)
        log.warning("settlement_deferred", key_prefix=owed.prefix, rid=owed.ask.rid)

    def cancel(self, prefix: str, ask: Ask, admitted_ms: int) -> None:
        """An admission that failed on the client's side may still have run once
        Redis took its command (a frozen Redis reads it when it thaws): settle it at
        zero, so a reservation nobody owns does not stay counted."""
        if self._cancels >= MAX_CANCELS:
            return
        self._cancels += 1
        self.add(Owed(prefix, ask, 0, 0, b"", admitted_ms))

    async def replay_once(self) -> int:
        """Settle what is owed, oldest first, until the store fails again; returns how
        many were settled."""
        done = 0
        for rid, (owed, row) in list(self._owed.items()):
            async with self.gate:
                try:
                    outcome = await self.store.settle(
                        owed.prefix, owed.ask, owed.tokens, owed.journal, owed.admitted_ms
                    )
                except RedisError:
                    break
                del self._owed[rid]
                self._cancels -= row is None
                # No row: a cancelled admission, whose refusal was audited already.
                if row is not None:
                    if outcome is Settled.ABANDONED:
                        prompt = owed.ask.prompt_estimate
                        row = msgspec.structs.replace(
                            row, tokens_in=prompt, tokens_out=max(0, owed.reserved - prompt)
                        )
                    # A journal entry is left only when the outcome was SETTLED;
                    # releasing an absent one costs nothing.
                    self.audit.record(row, release=True)
            done += 1
        if done:
            log.info("settlements_replayed", settled=done, waiting=len(self._owed))
        return done

    async def step(self) -> float:
        """Replay what is owed (a supervised step)."""
        if self._owed:
            await self.replay_once()
        return REPLAY_INTERVAL_S

    async def close(self) -> None:
        """Graceful stop: one last replay, then audit what is left as it happened. Its
        reservation may stay counted (an over-count, never an overspend)."""
        if self._owed:
            await self.replay_once()
        for owed, row in self._owed.values():
            log.warning("settlement_abandoned_at_stop", key_prefix=owed.prefix, rid=owed.ask.rid)
            if row is not None:
                self.audit.record(row, release=False)
        self._owed.clear()
        self._cancels = 0
