"""The log of key changes (revocations and policy changes) that triggers write.

A PostgreSQL listener catches up on it after losing its connection; embedded mode polls
it instead of NOTIFY (SPEC §4.5).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.database import connect
from nz_core.schema import key_changes

__all__ = ["changes_since", "latest_change", "prune_changes"]


async def latest_change(engine: AsyncEngine) -> int:
    """The newest change id (0 when there is none)."""
    async with connect(engine) as conn:
        return int(await conn.scalar(sa.select(sa.func.max(key_changes.c.id))) or 0)


async def changes_since(
    engine: AsyncEngine, after: int, limit: int = 10_000
) -> list[tuple[int, str]]:
    """(id, key prefix) of the changes after id ``after``, oldest first."""
    async with connect(engine) as conn:
        rows = await conn.execute(
            sa.select(key_changes.c.id, key_changes.c.key_prefix)
            .where(key_changes.c.id > after)
            .order_by(key_changes.c.id)
            .limit(limit)
        )
        return [(int(row.id), str(row.key_prefix)) for row in rows]


async def prune_changes(engine: AsyncEngine, before: datetime) -> int:
    """Delete changes older than ``before``; nobody needs to catch up that far."""
    async with connect(engine) as conn:
        result = await conn.execute(key_changes.delete().where(key_changes.c.changed_at < before))
    return int(result.rowcount or 0)
