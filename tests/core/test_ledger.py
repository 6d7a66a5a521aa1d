"""The audit log and the ledger, written together (SPEC §4.8), on both databases."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.budgets import Period, period_bounds
from nz_core.changes import changes_since, latest_change, prune_changes
from nz_core.database import connect
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.ledger import RowsRefused, delete_expired_prompts, period_tokens, record
from nz_core.schema import audit_log, budget_usage, prompt_log

BERLIN = ZoneInfo("Europe/Berlin")


async def a_key(engine: AsyncEngine) -> tuple[int, str]:
    tenant = f"ledger-{uuid.uuid4().hex[:8]}"
    await admin.create_tenant(engine, tenant)
    record_ = (
        await admin.create_key(engine, tenant, "k", hasher=KeyHasher(TEST_HASH_PROFILE))
    ).record
    return record_.id, record_.prefix


def audit_row(
    key_id: int | None, prefix: str | None, ts: datetime, tin: int, tout: int
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "request_id": "r",
        "ts": ts,
        "tenant_id": None,
        "key_id": key_id,
        "key_prefix": prefix,
        "endpoint": "/api/chat",
        "model": "llama3.2:latest",
        "tokens_in": tin,
        "tokens_out": tout,
        "status": 200,
        "latency_ms": 3,
        "ttft_ms": 1,
        "client_ip": None,
        "stream": False,
    }


async def test_rows_count_once_and_the_ledger_equals_the_audit(engine: AsyncEngine) -> None:
    key_id, prefix = await a_key(engine)
    # 23:30 UTC on 31 Jan is already 1 Feb in Berlin: a new day and a new month there.
    late = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)
    early = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    rows = [
        audit_row(key_id, prefix, early, 10, 20),
        audit_row(key_id, prefix, late, 1, 2),
        audit_row(None, None, late, 0, 0),  # a 401: audited, never in the ledger
    ]
    first = await record(engine, rows, BERLIN)
    assert first == {row["id"] for row in rows}
    again = await record(engine, [*rows, rows[0]], BERLIN)  # a retried batch, duplicates too
    assert again == set()
    assert (
        await period_tokens(
            engine, key_id, Period.TOTAL, period_bounds(Period.TOTAL, late, BERLIN)[0]
        )
        == 33
    )
    assert (
        await period_tokens(engine, key_id, Period.DAY, period_bounds(Period.DAY, early, BERLIN)[0])
        == 30
    )
    assert (
        await period_tokens(engine, key_id, Period.DAY, period_bounds(Period.DAY, late, BERLIN)[0])
        == 3
    )
    assert (
        await period_tokens(
            engine, key_id, Period.MONTH, period_bounds(Period.MONTH, late, BERLIN)[0]
        )
        == 3
    )
    async with connect(engine) as conn:
        audited = await conn.scalar(
            sa.select(sa.func.sum(audit_log.c.tokens_in + audit_log.c.tokens_out)).where(
                audit_log.c.key_prefix == prefix
            )
        )
        ledger = await conn.scalar(
            sa.select(sa.func.sum(budget_usage.c.tokens)).where(
                budget_usage.c.key_id == key_id, budget_usage.c.period == "total"
            )
        )
    assert audited == ledger == 33
    key = await admin.get_key(engine, prefix)
    assert key.last_used_at == late


async def test_prompt_rows_and_their_retention(engine: AsyncEngine) -> None:
    key_id, prefix = await a_key(engine)
    now = datetime.now(UTC)
    kept, expired = uuid.uuid4(), uuid.uuid4()
    prompts = [
        {
            "id": kept,
            "request_id": "a",
            "key_id": key_id,
            "ts": now,
            "request_body": "{}",
            "response_text": "hi",
            "expires_at": now + timedelta(days=1),
        },
        {
            "id": expired,
            "request_id": "b",
            "key_id": key_id,
            "ts": now - timedelta(days=8),
            "response_text": "old",
            "request_body": "{}",
            "expires_at": now - timedelta(days=1),
        },
    ]
    await record(engine, [], ZoneInfo("UTC"), prompts)
    while await delete_expired_prompts(engine, now, limit=1):
        pass
    async with connect(engine) as conn:
        left = {
            row.id
            for row in await conn.execute(
                sa.select(prompt_log.c.id).where(prompt_log.c.key_id == key_id)
            )
        }
    assert left == {kept}
    assert prefix


async def test_the_change_log_feeds_pollers_and_is_pruned(engine: AsyncEngine) -> None:
    start = await latest_change(engine)
    _, prefix = await a_key(engine)
    await admin.set_key_limits(engine, prefix, rpm=3)
    await admin.revoke_key(engine, prefix)
    seen = await changes_since(engine, start)
    assert [p for _, p in seen if p == prefix] == [prefix, prefix]
    assert all(a < b for (a, _), (b, _) in itertools.pairwise(seen))
    assert await prune_changes(engine, datetime.now(UTC) + timedelta(seconds=5)) >= 2
    assert await changes_since(engine, start) == []


async def test_a_value_the_database_cannot_store_refuses_the_whole_batch(
    engine: AsyncEngine,
) -> None:
    """RowsRefused, not an unreachable database and not a driver error: the caller may
    split the batch. Nothing of it is written, and the message quotes no value."""
    key_id, prefix = await a_key(engine)
    now = datetime.now(UTC)
    # NUL: PostgreSQL refuses it in text. A lone surrogate: neither driver encodes it.
    for poison in ({"model": "a\x00b\udc80"}, {"endpoint": "/\udc80"}):
        good, bad = audit_row(key_id, prefix, now, 1, 2), audit_row(key_id, prefix, now, 3, 4)
        bad |= poison
        with pytest.raises(RowsRefused) as refused:
            await record(engine, [good, bad], BERLIN)
        assert "\x00" not in str(refused.value)
        assert "\udc80" not in str(refused.value)
        async with connect(engine) as conn:
            written = await conn.scalar(
                sa.select(sa.func.count()).where(audit_log.c.id.in_([good["id"], bad["id"]]))
            )
        assert written == 0
    # A CHECK constraint is a refusal too.
    with pytest.raises(RowsRefused, match="tokens_positive"):
        await record(engine, [audit_row(key_id, prefix, now, -1, 0)], BERLIN)
    start = period_bounds(Period.TOTAL, now, BERLIN)[0]
    assert await period_tokens(engine, key_id, Period.TOTAL, start) == 0


async def test_a_batch_written_in_parts_counts_each_row_once(engine: AsyncEngine) -> None:
    """What a writer that splits a refused batch relies on: parts written on their own,
    overlapping or repeated, still put each row in the audit and the ledger once."""
    key_id, prefix = await a_key(engine)
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    rows = [audit_row(key_id, prefix, now, n, 1) for n in range(1, 9)]
    assert len(await record(engine, rows[:3], BERLIN)) == 3
    assert len(await record(engine, rows[2:6], BERLIN)) == 3  # rows[2] was there
    assert len(await record(engine, rows, BERLIN)) == 2
    total = sum(n + 1 for n in range(1, 9))
    start = period_bounds(Period.TOTAL, now, BERLIN)[0]
    assert await period_tokens(engine, key_id, Period.TOTAL, start) == total
    async with connect(engine) as conn:
        audited = await conn.scalar(
            sa.select(sa.func.sum(audit_log.c.tokens_in + audit_log.c.tokens_out)).where(
                audit_log.c.key_prefix == prefix
            )
        )
    assert audited == total
