"""Housekeeping that keeps the accounting whole (SPEC §4.4, §4.8, §10).

* Reaping (production): journal entries whose gateway died are audited by whoever is
  alive: reservations whose lease ran out, at their reserved amount; rows settled but
  never written. Writing is idempotent, so several replicas reaping alike is harmless.
* Sweeping: expired prompt-log rows are deleted; the change log is pruned.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.changes import prune_changes
from nz_core.ledger import delete_expired_prompts
from nz_proxy.admission.stores import StateStore
from nz_proxy.audit import AuditWriter, decode_row

__all__ = ["reap_once", "reap_step", "sweep_once", "sweep_step"]

log = structlog.get_logger("nz_proxy.maintenance")

SWEEP_INTERVAL_S: Final = 60.0
CHANGE_LOG_KEPT: Final = timedelta(days=1)


async def reap_once(store: StateStore, audit: AuditWriter, grace_ms: int) -> int:
    """Queue the journal rows whose owner is gone; returns how many."""
    entries = await store.reap(grace_ms)
    for entry in entries:
        try:
            row = decode_row(entry.row)
        except msgspec.DecodeError:
            log.error("journal_entry_unreadable", key_prefix=entry.prefix, rid=entry.rid)
            continue
        if entry.abandoned:
            # Settled at its reservation (SPEC §4.4): the prompt at its estimate, the
            # rest of the reservation as completion.
            row = msgspec.structs.replace(
                row, tokens_out=max(0, entry.reserved - row.tokens_in), status=500
            )
        audit.record(row, release=True)
    if entries:
        log.warning("journal_reaped", rows=len(entries))
    return len(entries)


async def reap_step(store: StateStore, audit: AuditWriter, lease_s: float, grace_s: float) -> float:
    """Reap (a supervised step), every half lease: settled rows their own process has
    not written within ``grace_s``, and reservations whose lease ran out."""
    await reap_once(store, audit, int(grace_s * 1000))
    return lease_s / 2


async def sweep_once(engine: AsyncEngine) -> tuple[int, int]:
    """(prompt rows deleted, change-log rows pruned)."""
    now = datetime.now(UTC)
    prompts = await delete_expired_prompts(engine, now)
    changes = await prune_changes(engine, now - CHANGE_LOG_KEPT)
    return prompts, changes


async def sweep_step(engine: AsyncEngine) -> float:
    """Sweep (a supervised step), every minute."""
    prompts, _ = await sweep_once(engine)
    if prompts:
        log.info("prompt_log_swept", rows=prompts)
    return SWEEP_INTERVAL_S
