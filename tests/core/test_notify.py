"""PostgreSQL triggers notify every listener of revocations and policy changes (§4.5)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.database import connect, create_engine
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.schema import revocations
from tests import services


@pytest.fixture
async def pg_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def listener(postgres_url: str) -> AsyncIterator[asyncio.Queue[tuple[str, str]]]:
    """A LISTEN connection of its own, as every gateway replica holds."""
    database = postgres_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, database=database
    )
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def on_notify(_conn: object, _pid: int, channel: str, payload: str) -> None:
        queue.put_nowait((channel, payload))

    await conn.add_listener("key_revoked", on_notify)
    await conn.add_listener("policy_changed", on_notify)
    try:
        yield queue
    finally:
        await conn.close()


async def received(queue: asyncio.Queue[tuple[str, str]], count: int) -> set[tuple[str, str]]:
    got = set()
    for _ in range(count):
        got.add(await asyncio.wait_for(queue.get(), timeout=2))
    return got


async def test_direct_insert_into_revocations_notifies_and_revokes(
    pg_engine: AsyncEngine, listener: asyncio.Queue[tuple[str, str]]
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await admin.create_tenant(pg_engine, tenant)
    created = await admin.create_key(pg_engine, tenant, "k", hasher=KeyHasher(TEST_HASH_PROFILE))
    prefix = created.record.prefix
    async with connect(pg_engine) as conn:  # what neuronetz-console does
        await conn.execute(revocations.insert().values(key_prefix=prefix, revoked_by="console"))
    got = await received(listener, 2)
    assert ("key_revoked", prefix) in got
    assert ("policy_changed", prefix) in got
    key = await admin.get_key(pg_engine, prefix)
    assert key.status == "revoked"


async def test_policy_changes_notify(
    pg_engine: AsyncEngine, listener: asyncio.Queue[tuple[str, str]]
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await admin.create_tenant(pg_engine, tenant)
    hasher = KeyHasher(TEST_HASH_PROFILE)
    first = (await admin.create_key(pg_engine, tenant, "a", hasher=hasher)).record.prefix
    second = (await admin.create_key(pg_engine, tenant, "b", hasher=hasher)).record.prefix
    assert listener.empty()  # creating keys changes no cached policy

    await admin.set_key_limits(pg_engine, first, rpm=5)
    assert await received(listener, 1) == {("policy_changed", first)}
    await admin.set_budget(pg_engine, second, daily=100)
    assert await received(listener, 1) == {("policy_changed", second)}
    await admin.set_models(pg_engine, tenant, models=["llama3.2"])
    assert await received(listener, 2) == {("policy_changed", first), ("policy_changed", second)}
    await admin.set_tenant_limits(pg_engine, tenant, rpm=7)
    assert await received(listener, 2) == {("policy_changed", first), ("policy_changed", second)}
    # Writes that change nothing the gateway caches stay silent.
    async with connect(pg_engine) as conn:
        await conn.execute(sa.text("UPDATE gateway.api_keys SET last_used_at = now()"))
    await admin.set_tenant_limits(pg_engine, tenant, rpm=7)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(listener.get(), timeout=0.5)
