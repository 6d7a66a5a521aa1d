"""Control-plane operations against the real PostgreSQL and SQLite (SPEC §7, §11)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.admin import UNSET
from nz_core.budgets import Budgets, Period
from nz_core.database import connect
from nz_core.errors import InvalidValue, KeyNotFound, TenantExists, TenantNotFound
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.limits import Limits
from nz_core.schema import api_keys, audit_log, key_changes, revocations
from nz_core.scopes import Scope

HASHER = KeyHasher(TEST_HASH_PROFILE)


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def new_key(engine: AsyncEngine, tenant: str, **kwargs: object) -> admin.CreatedKey:
    return await admin.create_key(engine, tenant, "k", hasher=HASHER, **kwargs)  # type: ignore[arg-type]


async def changes_for(engine: AsyncEngine, prefix: str) -> list[str]:
    async with connect(engine) as conn:
        rows = await conn.execute(
            sa.select(key_changes.c.kind)
            .where(key_changes.c.key_prefix == prefix)
            .order_by(key_changes.c.id)
        )
        return [row.kind for row in rows]


async def test_tenant_lifecycle(engine: AsyncEngine) -> None:
    name = unique("acme")
    tenant = await admin.create_tenant(engine, name, limits=Limits(rpm=60))
    assert tenant.name == name
    assert tenant.limits == Limits(rpm=60)
    assert not tenant.models.allow_all
    assert tenant.created_at.tzinfo is UTC
    assert abs(tenant.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert (await admin.get_tenant(engine, name)).id == tenant.id
    assert name in [t.name for t in await admin.list_tenants(engine)]
    with pytest.raises(TenantExists):
        await admin.create_tenant(engine, name)
    with pytest.raises(TenantNotFound):
        await admin.get_tenant(engine, unique("missing"))


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "two\nlines"])
async def test_bad_tenant_names_write_nothing(engine: AsyncEngine, name: str) -> None:
    before = len(await admin.list_tenants(engine))
    with pytest.raises(InvalidValue):
        await admin.create_tenant(engine, name)
    assert len(await admin.list_tenants(engine)) == before


async def test_created_key_is_returned_once_and_stored_only_as_hash(engine: AsyncEngine) -> None:
    tenant = unique("t")
    await admin.create_tenant(engine, tenant)
    created = await new_key(engine, tenant, scopes=frozenset({Scope.CHAT}))
    assert re.fullmatch(r"nz_[0-9A-Za-z]{52}", created.key)
    assert created.record.prefix == created.key[:12]
    assert created.record.scopes == {Scope.CHAT}
    assert created.key not in repr(created)
    async with connect(engine) as conn:
        row = (
            await conn.execute(
                sa.select(api_keys).where(api_keys.c.prefix == created.record.prefix)
            )
        ).one()
    stored = [str(v) for v in row]
    assert all(created.key[12:] not in value for value in stored)
    assert HASHER.verify(row.hash, created.key)
    listed = await admin.list_keys(engine, tenant)
    assert [k.prefix for k in listed] == [created.record.prefix]
    assert all(created.key not in repr(k) for k in listed)


async def test_key_for_unknown_tenant(engine: AsyncEngine) -> None:
    with pytest.raises(TenantNotFound):
        await new_key(engine, unique("ghost"))
    with pytest.raises(InvalidValue):
        await new_key(engine, unique("ghost"), scopes=frozenset())


async def test_revoke_inserts_a_revocation_and_the_trigger_marks_the_key(
    engine: AsyncEngine,
) -> None:
    tenant = unique("t")
    await admin.create_tenant(engine, tenant)
    prefix = (await new_key(engine, tenant)).record.prefix
    revoked = await admin.revoke_key(engine, prefix, by="test", reason="leaked")
    assert revoked.status == "revoked"
    assert revoked.revoked_at is not None
    again = await admin.revoke_key(engine, prefix)
    assert again.revoked_at == revoked.revoked_at
    async with connect(engine) as conn:
        rows = (
            await conn.execute(sa.select(revocations).where(revocations.c.key_prefix == prefix))
        ).all()
    assert [(r.revoked_by, r.reason) for r in rows] == [("test", "leaked")]
    assert await changes_for(engine, prefix) == ["revoked"]
    for bad in ("nz_000000000", "garbage"):
        with pytest.raises(KeyNotFound):
            await admin.revoke_key(engine, bad)


async def test_a_direct_insert_into_revocations_revokes_like_the_console(
    engine: AsyncEngine,
) -> None:
    tenant = unique("t")
    await admin.create_tenant(engine, tenant)
    prefix = (await new_key(engine, tenant)).record.prefix
    async with connect(engine) as conn:
        await conn.execute(revocations.insert().values(key_prefix=prefix, revoked_by="console"))
    key = await admin.get_key(engine, prefix)
    assert key.status == "revoked"
    assert key.revoked_at is not None
    async with connect(engine) as conn:
        with pytest.raises(IntegrityError):  # a revocation must name a real key
            await conn.execute(revocations.insert().values(key_prefix="nz_000000000"))


async def test_limits_set_clear_and_inherit(engine: AsyncEngine) -> None:
    tenant = unique("t")
    await admin.create_tenant(engine, tenant, limits=Limits(rpm=10, tpm=1000))
    prefix = (await new_key(engine, tenant, limits=Limits(rpm=5))).record.prefix
    key = await admin.set_key_limits(engine, prefix, tpm=50, concurrent=2)
    assert key.limits == Limits(rpm=5, tpm=50, concurrent=2)
    key = await admin.set_key_limits(engine, prefix, rpm=None)
    assert key.limits == Limits(rpm=None, tpm=50, concurrent=2)
    updated = await admin.set_tenant_limits(engine, tenant, rpm=None, concurrent=8)
    assert updated.limits == Limits(rpm=None, tpm=1000, concurrent=8)
    assert await changes_for(engine, prefix) == ["policy", "policy", "policy"]
    # An unchanged value writes no change record.
    await admin.set_key_limits(engine, prefix, tpm=50)
    assert len(await changes_for(engine, prefix)) == 3


@pytest.mark.parametrize("bad", [0, -3, 2.5, "7"])
async def test_invalid_limits_write_nothing(engine: AsyncEngine, bad: object) -> None:
    tenant = unique("t")
    await admin.create_tenant(engine, tenant, limits=Limits(rpm=10))
    prefix = (await new_key(engine, tenant)).record.prefix
    with pytest.raises(InvalidValue):
        await admin.set_tenant_limits(engine, tenant, tpm=5, rpm=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        await admin.set_key_limits(engine, prefix, rpm=bad)  # type: ignore[arg-type]
    assert (await admin.get_tenant(engine, tenant)).limits == Limits(rpm=10)
    assert (await admin.get_key(engine, prefix)).limits == Limits()


async def test_the_database_itself_refuses_bad_values(engine: AsyncEngine) -> None:
    tenant = unique("t")
    await admin.create_tenant(engine, tenant)
    key_id = (await new_key(engine, tenant)).record.id
    for values in ({"rpm": 0}, {"scopes": "admin"}, {"status": "revoked"}):
        with pytest.raises(IntegrityError):
            async with connect(engine) as conn:
                await conn.execute(
                    api_keys.update().where(api_keys.c.id == key_id).values(**values)
                )


async def test_budgets(engine: AsyncEngine) -> None:
    tenant = unique("t")
    await admin.create_tenant(engine, tenant)
    prefix = (await new_key(engine, tenant)).record.prefix
    assert await admin.get_budget(engine, prefix) == Budgets()
    assert await admin.set_budget(engine, prefix, daily=1000) == Budgets(daily=1000)
    assert await admin.set_budget(engine, prefix, total=0, monthly=5) == Budgets(1000, 5, 0)
    assert await admin.set_budget(engine, prefix, daily=None) == Budgets(None, 5, 0)
    assert await admin.get_budget(engine, prefix) == Budgets(None, 5, 0)
    with pytest.raises(InvalidValue):
        await admin.set_budget(engine, prefix, monthly=-1)
    assert await admin.get_budget(engine, prefix) == Budgets(None, 5, 0)
    with pytest.raises(KeyNotFound):
        await admin.set_budget(engine, "nz_000000000", daily=UNSET)
    assert await changes_for(engine, prefix) == ["policy", "policy", "policy"]


async def test_models(engine: AsyncEngine) -> None:
    tenant = unique("t")
    await admin.create_tenant(engine, tenant)
    prefix = (await new_key(engine, tenant)).record.prefix
    updated = await admin.set_models(engine, tenant, models=["llama3.2", "Mistral:7B"])
    assert updated.models.allowed == {"llama3.2:latest", "mistral:7b"}
    assert not updated.models.allow_all
    updated = await admin.set_models(engine, tenant, allow_all=True)
    assert updated.models.allow_all
    assert updated.models.allowed == {"llama3.2:latest", "mistral:7b"}
    for bad in ({"models": []}, {"models": [" "]}, {}):
        with pytest.raises(InvalidValue):
            await admin.set_models(engine, tenant, **bad)  # type: ignore[arg-type]
    assert await changes_for(engine, prefix) == ["policy", "policy"]


async def test_prompt_log(engine: AsyncEngine) -> None:
    tenant = unique("t")
    await admin.create_tenant(engine, tenant)
    prefix = (await new_key(engine, tenant)).record.prefix
    key = await admin.set_prompt_log(engine, prefix, enabled=True, retention_days=3)
    assert (key.prompt_log_enabled, key.prompt_log_retention_days) == (True, 3)
    key = await admin.set_prompt_log(engine, prefix, enabled=False)
    assert not key.prompt_log_enabled
    with pytest.raises(InvalidValue):
        await admin.set_prompt_log(engine, prefix, enabled=True, retention_days=0)


async def test_usage_sums_the_audit_log_per_period(engine: AsyncEngine) -> None:
    tenant_name = unique("t")
    tenant = await admin.create_tenant(engine, tenant_name)
    other = await admin.create_tenant(engine, unique("other"))
    key_a = (await new_key(engine, tenant_name)).record.prefix
    key_b = (await new_key(engine, tenant_name)).record.prefix
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    rows = [
        (tenant.id, key_a, now - timedelta(hours=1), 10, 20),
        (tenant.id, key_b, now - timedelta(hours=2), 1, 2),
        (tenant.id, key_a, now - timedelta(days=3), 100, 200),  # earlier this month
        (tenant.id, key_a, now - timedelta(days=40), 1000, 2000),  # last month
        (other.id, None, now, 9999, 9999),  # another tenant
    ]
    async with connect(engine) as conn:
        await conn.execute(
            audit_log.insert(),
            [
                {
                    "id": uuid.uuid4(),
                    "request_id": "r",
                    "ts": ts,
                    "tenant_id": tid,
                    "key_prefix": prefix,
                    "endpoint": "/api/chat",
                    "tokens_in": tin,
                    "tokens_out": tout,
                    "status": 200,
                    "latency_ms": 5,
                    "stream": False,
                }
                for tid, prefix, ts, tin, tout in rows
            ],
        )
    day = await admin.usage(engine, tenant_name, period=Period.DAY, now=now)
    assert (day.requests, day.tokens_in, day.tokens_out) == (2, 11, 22)
    month = await admin.usage(engine, tenant_name, period=Period.MONTH, now=now)
    assert (month.requests, month.tokens_in, month.tokens_out) == (3, 111, 222)
    total = await admin.usage(engine, tenant_name, period=Period.TOTAL, now=now)
    assert (total.requests, total.tokens_in, total.tokens_out) == (4, 1111, 2222)
    only_b = await admin.usage(engine, tenant_name, key=key_b, period=Period.TOTAL, now=now)
    assert (only_b.requests, only_b.tokens_in) == (1, 1)
    with pytest.raises(KeyNotFound):  # a key is only visible through its own tenant
        await admin.usage(engine, other.name, key=key_a, now=now)
