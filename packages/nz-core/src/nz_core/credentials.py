"""Reading what the gateway needs to verify a key and enforce its policy, in one query.

This is the gateway's only database read on a key-cache miss: the key's argon2id hash,
and everything its cache holds about it (SPEC §4.2). Only active keys are returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.budgets import Budgets
from nz_core.database import connect
from nz_core.limits import Limits, effective_limits
from nz_core.models import ModelPolicy
from nz_core.schema import api_keys, budgets, tenants
from nz_core.scopes import Scope, parse_scopes

__all__ = ["Credentials", "KeyPolicy", "load_credentials", "store_rehash"]


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What a verified key may do: effective limits (tenant values filled in), budgets,
    scopes, model policy and prompt logging."""

    key_id: int
    prefix: str
    tenant_id: int
    tenant: str
    scopes: frozenset[Scope]
    limits: Limits
    budgets: Budgets
    models: ModelPolicy
    prompt_log: bool
    prompt_log_retention_days: int | None


@dataclass(frozen=True, slots=True)
class Credentials:
    """An active key's stored hash and its policy."""

    hash: str
    policy: KeyPolicy


_QUERY = (
    sa.select(
        api_keys.c.id,
        api_keys.c.prefix,
        api_keys.c.hash,
        api_keys.c.scopes,
        api_keys.c.rpm,
        api_keys.c.tpm,
        api_keys.c.concurrent,
        api_keys.c.prompt_log_enabled,
        api_keys.c.prompt_log_retention_days,
        tenants.c.id.label("tenant_id"),
        tenants.c.name.label("tenant"),
        tenants.c.rpm.label("tenant_rpm"),
        tenants.c.tpm.label("tenant_tpm"),
        tenants.c.concurrent.label("tenant_concurrent"),
        tenants.c.allow_all_models,
        tenants.c.allowed_models,
        budgets.c.daily,
        budgets.c.monthly,
        budgets.c.total,
    )
    .join(tenants, tenants.c.id == api_keys.c.tenant_id)
    .outerjoin(budgets, budgets.c.key_id == api_keys.c.id)
    .where(api_keys.c.status == "active")
)


async def load_credentials(engine: AsyncEngine, prefix: str) -> Credentials | None:
    """The active key with ``prefix``, or ``None`` (unknown or revoked).

    Raises:
        DatabaseUnreachable: the database cannot be reached.
    """
    async with connect(engine) as conn:
        row = (await conn.execute(_QUERY.where(api_keys.c.prefix == prefix))).first()
    if row is None:
        return None
    policy = KeyPolicy(
        key_id=row.id,
        prefix=row.prefix,
        tenant_id=row.tenant_id,
        tenant=row.tenant,
        scopes=parse_scopes(row.scopes),
        limits=effective_limits(
            Limits(row.rpm, row.tpm, row.concurrent),
            Limits(row.tenant_rpm, row.tenant_tpm, row.tenant_concurrent),
        ),
        budgets=Budgets(row.daily, row.monthly, row.total),
        models=ModelPolicy.of(allow_all=row.allow_all_models, allowed=row.allowed_models),
        prompt_log=row.prompt_log_enabled,
        prompt_log_retention_days=row.prompt_log_retention_days,
    )
    return Credentials(hash=row.hash, policy=policy)


async def store_rehash(engine: AsyncEngine, key_id: int, old_hash: str, new_hash: str) -> bool:
    """Replace a key's hash made with outdated parameters (rehash on verify). Only if it
    is still the old one, so a concurrent rehash or revocation wins."""
    async with connect(engine) as conn:
        result = await conn.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.hash == old_hash)
            .values(hash=new_hash)
        )
    return result.rowcount == 1
