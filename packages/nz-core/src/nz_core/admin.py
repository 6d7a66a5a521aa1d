"""Control-plane operations: what the bootstrap CLI and ``neuronetz-console`` do.

Every function takes an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (PostgreSQL or
SQLite, see :func:`nz_core.database.create_engine`), runs in one transaction, validates
its arguments before writing anything, and reports problems as :class:`NzError`
subclasses whose message is one line fit for an operator. None of them prints, exits or
reads the environment.

The full API key exists only in the :class:`CreatedKey` that :func:`create_key`
returns; nothing here stores, logs or returns it again.

Changes take effect on running gateways within about a second: revocation and policy
changes fire database triggers that notify every replica (SPEC §4.5).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, TypeAlias
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nz_core.budgets import Budgets, Period, period_bounds, validate_budget
from nz_core.database import connect
from nz_core.errors import InvalidValue, KeyNotFound, TenantExists, TenantNotFound
from nz_core.keys import KeyHasher, generate_key, is_prefix
from nz_core.limits import Limits, validate_limit
from nz_core.models import ModelPolicy, normalize_model
from nz_core.schema import api_keys, audit_log, budgets, revocations, tenants
from nz_core.scopes import DEFAULT_SCOPES, Scope, check_scopes, format_scopes, parse_scopes

__all__ = [
    "UNSET",
    "ApiKey",
    "Change",
    "CreatedKey",
    "Tenant",
    "Usage",
    "create_key",
    "create_tenant",
    "get_budget",
    "get_key",
    "get_tenant",
    "list_keys",
    "list_tenants",
    "revoke_key",
    "set_budget",
    "set_key_limits",
    "set_models",
    "set_prompt_log",
    "set_tenant_limits",
    "usage",
]


class _Unset(Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET
"""Leave a value as it is (``None`` clears it, an integer sets it)."""

Change: TypeAlias = int | _Unset | None

NO_LIMITS: Final = Limits()
UTC_ZONE: Final = ZoneInfo("UTC")
TENANT_NAME_MAX: Final = 64
KEY_NAME_MAX: Final = 128


@dataclass(frozen=True, slots=True)
class Tenant:
    id: int
    name: str
    limits: Limits
    models: ModelPolicy
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored: never the key itself, only its prefix."""

    id: int
    tenant_id: int
    tenant: str
    prefix: str
    name: str
    scopes: frozenset[Scope]
    status: str
    limits: Limits
    prompt_log_enabled: bool
    prompt_log_retention_days: int | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """The result of :func:`create_key`: the only time the full key is available."""

    key: str = field(repr=False)
    record: ApiKey


@dataclass(frozen=True, slots=True)
class Usage:
    requests: int
    tokens_in: int
    tokens_out: int


def _check_name(kind: str, name: str, maximum: int) -> str:
    name = name.strip()
    if not name:
        raise InvalidValue(f"{kind} name must not be empty")
    if len(name) > maximum:
        raise InvalidValue(f"{kind} name is longer than {maximum} characters")
    if any(ch.isspace() and ch != " " for ch in name) or not name.isprintable():
        raise InvalidValue(f"{kind} name must be printable text on one line")
    return name


def _check_prefix(prefix: str) -> str:
    if not is_prefix(prefix):
        raise KeyNotFound(prefix)
    return prefix


def _now() -> datetime:
    return datetime.now(UTC)


def _tenant(row: sa.Row[Any]) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        limits=Limits(row.rpm, row.tpm, row.concurrent),
        models=ModelPolicy.of(allow_all=row.allow_all_models, allowed=row.allowed_models),
        created_at=row.created_at,
    )


_KEY_COLUMNS: Final = (*api_keys.c, tenants.c.name.label("tenant_name"))


def _key(row: sa.Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        tenant=row.tenant_name,
        prefix=row.prefix,
        name=row.name,
        scopes=parse_scopes(row.scopes),
        status=row.status,
        limits=Limits(row.rpm, row.tpm, row.concurrent),
        prompt_log_enabled=row.prompt_log_enabled,
        prompt_log_retention_days=row.prompt_log_retention_days,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


async def _tenant_row(conn: AsyncConnection, name: str) -> sa.Row[Any]:
    row = (await conn.execute(sa.select(tenants).where(tenants.c.name == name))).first()
    if row is None:
        raise TenantNotFound(name)
    return row


async def _key_row(conn: AsyncConnection, prefix: str) -> sa.Row[Any]:
    query = (
        sa.select(*_KEY_COLUMNS)
        .join(tenants, tenants.c.id == api_keys.c.tenant_id)
        .where(api_keys.c.prefix == _check_prefix(prefix))
    )
    row = (await conn.execute(query)).first()
    if row is None:
        raise KeyNotFound(prefix)
    return row


def _limit_values(rpm: Change, tpm: Change, concurrent: Change) -> dict[str, int | None]:
    values: dict[str, int | None] = {}
    for name, value in (("rpm", rpm), ("tpm", tpm), ("concurrent", concurrent)):
        if value is UNSET:
            continue
        validate_limit(name, value)
        values[name] = value
    return values


# -- tenants ------------------------------------------------------------------


async def create_tenant(
    engine: AsyncEngine,
    name: str,
    *,
    limits: Limits = NO_LIMITS,
    allow_all_models: bool = False,
    allowed_models: Iterable[str] = (),
) -> Tenant:
    """Create a tenant. By default it may use no model until :func:`set_models`.

    Raises:
        InvalidValue: the name is empty or too long.
        TenantExists: a tenant with this name exists.
    """
    name = _check_name("tenant", name, TENANT_NAME_MAX)
    models = sorted({normalize_model(m) for m in allowed_models if m.strip()})
    try:
        async with connect(engine) as conn:
            result = await conn.execute(
                tenants.insert().values(
                    name=name,
                    rpm=limits.rpm,
                    tpm=limits.tpm,
                    concurrent=limits.concurrent,
                    allow_all_models=allow_all_models,
                    allowed_models=models,
                    created_at=_now(),
                )
            )
            (tenant_id,) = result.inserted_primary_key or (None,)
            row = (await conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))).one()
    except IntegrityError:
        raise TenantExists(name) from None
    return _tenant(row)


async def get_tenant(engine: AsyncEngine, name: str) -> Tenant:
    """The tenant called ``name``. Raises :class:`TenantNotFound`."""
    async with connect(engine) as conn:
        return _tenant(await _tenant_row(conn, name))


async def list_tenants(engine: AsyncEngine) -> list[Tenant]:
    """Every tenant, by name."""
    async with connect(engine) as conn:
        rows = (await conn.execute(sa.select(tenants).order_by(tenants.c.name))).all()
    return [_tenant(row) for row in rows]


async def set_tenant_limits(
    engine: AsyncEngine,
    name: str,
    *,
    rpm: Change = UNSET,
    tpm: Change = UNSET,
    concurrent: Change = UNSET,
) -> Tenant:
    """Change a tenant's limits: an integer sets one, ``None`` removes it, ``UNSET``
    leaves it. Raises :class:`InvalidValue` or :class:`TenantNotFound`."""
    values = _limit_values(rpm, tpm, concurrent)
    async with connect(engine) as conn:
        row = await _tenant_row(conn, name)
        if values:
            await conn.execute(tenants.update().where(tenants.c.id == row.id).values(**values))
            row = await _tenant_row(conn, name)
    return _tenant(row)


async def set_models(
    engine: AsyncEngine,
    name: str,
    *,
    models: Iterable[str] | None = None,
    allow_all: bool | None = None,
) -> Tenant:
    """Replace a tenant's allowlist (``models``) and/or switch ``allow_all_models``.

    Raises:
        InvalidValue: neither argument given, or ``models`` names no model.
        TenantNotFound: no such tenant.
    """
    values: dict[str, Any] = {}
    if models is not None:
        normalized = sorted({normalize_model(m) for m in models if m.strip()})
        if not normalized:
            raise InvalidValue("the model list is empty; name at least one model")
        values["allowed_models"] = normalized
    if allow_all is not None:
        values["allow_all_models"] = allow_all
    if not values:
        raise InvalidValue("nothing to change: give models or allow_all")
    async with connect(engine) as conn:
        row = await _tenant_row(conn, name)
        await conn.execute(tenants.update().where(tenants.c.id == row.id).values(**values))
        return _tenant(await _tenant_row(conn, name))


# -- keys ---------------------------------------------------------------------


async def create_key(
    engine: AsyncEngine,
    tenant: str,
    name: str,
    *,
    scopes: frozenset[Scope] = DEFAULT_SCOPES,
    limits: Limits = NO_LIMITS,
    hasher: KeyHasher | None = None,
) -> CreatedKey:
    """Create a key for ``tenant``. The returned :class:`CreatedKey` holds the full key,
    which is never stored or shown again: only its argon2id hash is kept.

    Raises:
        InvalidValue: bad name, or no scope granting an endpoint.
        TenantNotFound: no such tenant.
    """
    name = _check_name("key", name, KEY_NAME_MAX)
    scopes = check_scopes(scopes)
    hasher = hasher or KeyHasher()
    async with connect(engine) as conn:
        tenant_row = await _tenant_row(conn, tenant)
        # The prefix is random too; a collision is astronomically rare, but the unique
        # constraint would turn it into an error, so draw again instead.
        for _ in range(5):
            key = generate_key()
            prefix = key[:12]
            exists = await conn.scalar(sa.select(api_keys.c.id).where(api_keys.c.prefix == prefix))
            if exists is None:
                break
        else:  # pragma: no cover - 62^9 prefixes
            raise InvalidValue("could not draw an unused key prefix")
        await conn.execute(
            api_keys.insert().values(
                tenant_id=tenant_row.id,
                prefix=prefix,
                hash=hasher.hash(key),
                name=name,
                scopes=format_scopes(scopes),
                status="active",
                rpm=limits.rpm,
                tpm=limits.tpm,
                concurrent=limits.concurrent,
                created_at=_now(),
            )
        )
        record = _key(await _key_row(conn, prefix))
    return CreatedKey(key=key, record=record)


async def get_key(engine: AsyncEngine, prefix: str) -> ApiKey:
    """The key with this prefix, whatever its status. Raises :class:`KeyNotFound`."""
    async with connect(engine) as conn:
        return _key(await _key_row(conn, prefix))


async def list_keys(engine: AsyncEngine, tenant: str) -> list[ApiKey]:
    """A tenant's keys, oldest first. Raises :class:`TenantNotFound`."""
    async with connect(engine) as conn:
        tenant_row = await _tenant_row(conn, tenant)
        rows = (
            await conn.execute(
                sa.select(*_KEY_COLUMNS)
                .join(tenants, tenants.c.id == api_keys.c.tenant_id)
                .where(api_keys.c.tenant_id == tenant_row.id)
                .order_by(api_keys.c.created_at, api_keys.c.id)
            )
        ).all()
    return [_key(row) for row in rows]


async def revoke_key(
    engine: AsyncEngine, prefix: str, *, by: str = "api", reason: str | None = None
) -> ApiKey:
    """Revoke a key by inserting into ``revocations``; the trigger marks it revoked and
    notifies every gateway. Revoking a revoked key changes nothing.

    Raises:
        KeyNotFound: no key has this prefix.
    """
    async with connect(engine) as conn:
        row = await _key_row(conn, prefix)
        if row.status != "revoked":
            await conn.execute(
                revocations.insert().values(
                    key_prefix=prefix, revoked_at=_now(), revoked_by=by, reason=reason
                )
            )
            row = await _key_row(conn, prefix)
    return _key(row)


async def set_key_limits(
    engine: AsyncEngine,
    prefix: str,
    *,
    rpm: Change = UNSET,
    tpm: Change = UNSET,
    concurrent: Change = UNSET,
) -> ApiKey:
    """Change a key's own limits; ``None`` clears one so the tenant's value applies.
    Raises :class:`InvalidValue` or :class:`KeyNotFound`."""
    values = _limit_values(rpm, tpm, concurrent)
    async with connect(engine) as conn:
        row = await _key_row(conn, prefix)
        if values:
            await conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(**values))
            row = await _key_row(conn, prefix)
    return _key(row)


async def set_prompt_log(
    engine: AsyncEngine, prefix: str, *, enabled: bool, retention_days: int | None = None
) -> ApiKey:
    """Opt a key in or out of prompt logging. ``retention_days`` (≥ 1) applies when
    enabling; ``None`` means the gateway's default retention.

    Raises:
        InvalidValue: a retention below 1 day.
        KeyNotFound: no such key.
    """
    if retention_days is not None:
        if isinstance(retention_days, bool) or not isinstance(retention_days, int):
            raise InvalidValue(f"retention must be a whole number of days, got {retention_days!r}")
        if retention_days < 1:
            raise InvalidValue(f"retention must be at least 1 day (got {retention_days})")
    values: dict[str, Any] = {"prompt_log_enabled": enabled}
    if enabled:
        values["prompt_log_retention_days"] = retention_days
    async with connect(engine) as conn:
        row = await _key_row(conn, prefix)
        await conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(**values))
        return _key(await _key_row(conn, prefix))


# -- budgets and usage --------------------------------------------------------


async def get_budget(engine: AsyncEngine, prefix: str) -> Budgets:
    """A key's budgets (all ``None`` when it has none). Raises :class:`KeyNotFound`."""
    async with connect(engine) as conn:
        row = await _key_row(conn, prefix)
        budget = (await conn.execute(sa.select(budgets).where(budgets.c.key_id == row.id))).first()
    if budget is None:
        return Budgets()
    return Budgets(budget.daily, budget.monthly, budget.total)


async def set_budget(
    engine: AsyncEngine,
    prefix: str,
    *,
    daily: Change = UNSET,
    monthly: Change = UNSET,
    total: Change = UNSET,
) -> Budgets:
    """Change a key's token budgets: an integer (≥ 0) sets one, ``None`` clears it,
    ``UNSET`` leaves it. Raises :class:`InvalidValue` or :class:`KeyNotFound`."""
    changes: dict[str, int | None] = {}
    for name, value in (("daily", daily), ("monthly", monthly), ("total", total)):
        if value is not UNSET:
            validate_budget(name, value)
            changes[name] = value
    async with connect(engine) as conn:
        row = await _key_row(conn, prefix)
        current = (await conn.execute(sa.select(budgets).where(budgets.c.key_id == row.id))).first()
        merged = {
            "daily": current.daily if current else None,
            "monthly": current.monthly if current else None,
            "total": current.total if current else None,
        } | changes
        if current is None:
            await conn.execute(budgets.insert().values(key_id=row.id, **merged))
        elif changes:
            await conn.execute(budgets.update().where(budgets.c.key_id == row.id).values(**changes))
    return Budgets(**merged)


async def usage(
    engine: AsyncEngine,
    tenant: str,
    *,
    key: str | None = None,
    period: Period = Period.DAY,
    now: datetime | None = None,
    tz: ZoneInfo = UTC_ZONE,
) -> Usage:
    """Requests and tokens from the audit log for a tenant (or one of its keys) in the
    current ``period`` (calendar day or month in ``tz``, or all time).

    Raises:
        TenantNotFound, KeyNotFound: unknown tenant, or a key not of that tenant.
    """
    now = now or _now()
    start, _ = period_bounds(period, now, tz)
    async with connect(engine) as conn:
        tenant_row = await _tenant_row(conn, tenant)
        query = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(audit_log.c.tokens_in), 0),
            sa.func.coalesce(sa.func.sum(audit_log.c.tokens_out), 0),
        ).where(audit_log.c.tenant_id == tenant_row.id, audit_log.c.ts >= start)
        if key is not None:
            key_row = await _key_row(conn, key)
            if key_row.tenant_id != tenant_row.id:
                raise KeyNotFound(key)
            query = query.where(audit_log.c.key_prefix == key)
        requests, tokens_in, tokens_out = (await conn.execute(query)).one()
    return Usage(int(requests), int(tokens_in), int(tokens_out))
