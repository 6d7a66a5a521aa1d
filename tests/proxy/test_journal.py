"""The Redis journal and the reaper (SPEC §4.4, §4.8): a gateway killed with kill -9
loses no accounting, and several replicas reaping alike count everything once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.budgets import Period
from nz_core.database import connect
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.limiter import Ask, BudgetLine
from nz_core.limits import Limits
from nz_core.schema import api_keys, audit_log, budget_usage
from nz_proxy.admission.stores import Settled
from nz_proxy.admission.stores.redis import RedisStore
from nz_proxy.audit import AuditRow, AuditWriter, encode_row
from nz_proxy.maintenance import reap_once
from tests import services
from tests.proxy.test_state import Clock

JOURNAL_DB = services.REDIS_DB + 3
UTC_ZONE = ZoneInfo("UTC")


@pytest.fixture
async def store() -> AsyncIterator[tuple[RedisStore, Clock]]:
    clock = Clock(int(datetime.now(UTC).timestamp() * 1000))
    client = aioredis.Redis.from_url(services.redis_url(JOURNAL_DB))
    await client.flushdb()
    try:
        yield RedisStore(client, clock=clock), clock
    finally:
        await client.aclose()


@pytest.fixture
async def key(postgres_url: str) -> AsyncIterator[tuple[AsyncEngine, int, str]]:
    from nz_core.database import create_engine

    engine = create_engine(postgres_url)
    tenant = f"journal-{uuid.uuid4().hex[:8]}"
    created = await admin.create_tenant(engine, tenant)
    record = (
        await admin.create_key(engine, tenant, "k", hasher=KeyHasher(TEST_HASH_PROFILE))
    ).record
    try:
        yield engine, record.id, record.prefix
    finally:
        await engine.dispose()
    assert created.name == tenant


def row(key_id: int, prefix: str, rid: str, **fields: object) -> AuditRow:
    values: dict[str, object] = {
        "id": uuid.UUID(rid).bytes,
        "request_id": "r-" + rid[:8],
        "ts_us": int(datetime.now(UTC).timestamp() * 1_000_000),
        "tenant_id": None,
        "key_id": key_id,
        "key_prefix": prefix,
        "endpoint": "/api/chat",
        "model": "llama3.2:latest",
        "tokens_in": 40,
        "tokens_out": 0,
        "status": 500,
        "latency_ms": 0,
        "ttft_ms": None,
        "client_ip": "10.0.0.1",
        "stream": True,
    }
    return AuditRow(**(values | fields))  # type: ignore[arg-type]


async def written(engine: AsyncEngine, prefix: str) -> tuple[list[tuple[int, int, int]], int]:
    async with connect(engine) as conn:
        rows = (
            await conn.execute(
                sa.select(audit_log.c.status, audit_log.c.tokens_in, audit_log.c.tokens_out).where(
                    audit_log.c.key_prefix == prefix
                )
            )
        ).all()
        key_id = sa.select(api_keys.c.id).where(api_keys.c.prefix == prefix).scalar_subquery()
        ledger = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(budget_usage.c.tokens), 0)).where(
                budget_usage.c.period == "total", budget_usage.c.key_id == key_id
            )
        )
    return sorted((r.status, r.tokens_in, r.tokens_out) for r in rows), int(ledger)


async def test_settled_rows_wait_in_the_journal_until_released(
    store: tuple[RedisStore, Clock], key: tuple[AsyncEngine, int, str]
) -> None:
    redis_store, clock = store
    engine, key_id, prefix = key
    rid = uuid.uuid4().hex
    ask = Ask(rid, True, Limits(concurrent=4), prompt_estimate=40, default_cap=100)
    admitted = await redis_store.admit(prefix, ask, encode_row(row(key_id, prefix, rid)))
    assert admitted.admitted
    final = row(key_id, prefix, rid, status=200, tokens_out=12, latency_ms=80)
    assert await redis_store.settle(prefix, ask, 52, encode_row(final)) is Settled.SETTLED
    assert await redis_store.reap(grace_ms=60_000) == []  # its owner may still write it
    clock.now += 60_001
    entries = await redis_store.reap(grace_ms=60_000)
    assert [(e.rid, e.abandoned) for e in entries] == [(rid, False)]
    # Written by a replica that outlived the owner, then released: gone for good.
    audit = AuditWriter(engine, redis_store, UTC_ZONE, capacity=100)
    assert await reap_once(redis_store, audit, 60_000) == 1
    assert await audit.flush()
    assert await redis_store.reap(grace_ms=0) == []
    rows, ledger = await written(engine, prefix)
    assert rows == [(200, 40, 12)]
    assert ledger == 52


async def test_an_abandoned_reservation_is_audited_once_at_its_reserved_amount(
    store: tuple[RedisStore, Clock], key: tuple[AsyncEngine, int, str]
) -> None:
    redis_store, clock = store
    engine, key_id, prefix = key
    day = BudgetLine(Period.DAY, 10_000, "day:x", ttl_ms=86_400_000)
    await redis_store.seed(prefix, "day:x", 0, day.ttl_ms)

    def ask(rid: str, cap: int = 60) -> Ask:
        return Ask(rid, True, Limits(concurrent=2), (day,), 40, cap, lease_ms=5_000)

    stalled, dead = uuid.uuid4().hex, uuid.uuid4().hex
    for rid in (stalled, dead):
        admitted = await redis_store.admit(prefix, ask(rid), encode_row(row(key_id, prefix, rid)))
        assert admitted.reserved == 100
    clock.now += 5_001  # no renewal, no settlement: both leases ran out
    # Two replicas reap and write alike.
    audits = [AuditWriter(engine, redis_store, UTC_ZONE, capacity=100) for _ in range(2)]
    for audit in audits:
        assert await reap_once(redis_store, audit, 60_000) == 2
    # A stalled owner settles late, before the reaped rows are written: too late.
    assert await redis_store.settle(prefix, ask(stalled), 7, b"") is Settled.ABANDONED
    for audit in audits:
        assert await audit.flush()
    # After the write the entry is gone: a settlement finds nothing to change.
    assert await redis_store.settle(prefix, ask(dead), 7, b"") is Settled.UNKNOWN
    rows, ledger = await written(engine, prefix)
    assert rows == [(500, 40, 60), (500, 40, 60)]  # once each, at the reservation
    assert ledger == 200
    probe = await redis_store.admit(prefix, ask(uuid.uuid4().hex, cap=1), b"")
    assert probe.budget_states[0].used == 200 + 41  # the counter agrees with the ledger
