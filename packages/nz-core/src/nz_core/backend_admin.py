"""Backends and model policies in the database (SPEC §4.10, §4.12): the operations the
CLI and ``neuronetz-console`` call, and the one read the gateway makes.

Like :mod:`nz_core.admin`, every operation takes an engine, runs in one transaction,
validates before it writes and reports problems as :class:`NzError` subclasses with a
one-line message. An operation that would change nothing writes nothing.

Every write fires a trigger that sends ``pg_notify('backends_changed',
'<table>:<name or model>')`` in the same transaction (PostgreSQL); every replica then
rereads both tables with :func:`load_topology`. Embedded mode (SQLite) has no NOTIFY:
the gateway calls :func:`load_topology` about once a second and compares.

Removing a backend is allowed at any time: no new request goes there, and the requests
in flight on it finish (a replica keeps its connection until their answers end). To
take a node out without cutting anything, drain it, wait until its in-flight count is
0, then remove it. Once the table is empty, ``OLLAMA_BASE_URL(S)`` define the
backends again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nz_core.backends import (
    Backend,
    BackendStatus,
    Topology,
    check_backend_name,
    check_backend_url,
    check_parallel,
    effective_backends,
)
from nz_core.database import connect
from nz_core.errors import BackendExists, BackendNotFound, InvalidValue
from nz_core.models import normalize_model
from nz_core.residency import ResidencyPolicy, check_num_ctx
from nz_core.schema import backends, model_policies

__all__ = [
    "activate_backend",
    "add_backend",
    "drain_backend",
    "get_backend",
    "list_backends",
    "list_model_policies",
    "load_topology",
    "remove_backend",
    "set_model_policy",
]


def _now() -> datetime:
    return datetime.now(UTC)


def _backend(row: sa.Row[Any]) -> Backend:
    return Backend(
        name=row.name,
        url=row.url,
        parallel=row.parallel,
        status=BackendStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _policy(row: sa.Row[Any]) -> ResidencyPolicy:
    return ResidencyPolicy(model=row.model, num_ctx=row.num_ctx, updated_at=row.updated_at)


def _known_name(name: str) -> str:
    # A name no backend can have is simply unknown, not invalid.
    try:
        return check_backend_name(name)
    except InvalidValue:
        raise BackendNotFound(name) from None


async def _backend_row(conn: AsyncConnection, name: str) -> sa.Row[Any]:
    row = (await conn.execute(sa.select(backends).where(backends.c.name == name))).first()
    if row is None:
        raise BackendNotFound(name)
    return row


async def _stored_backends(conn: AsyncConnection) -> list[Backend]:
    rows = await conn.execute(sa.select(backends).order_by(backends.c.name))
    return [_backend(row) for row in rows]


async def _stored_policies(conn: AsyncConnection) -> list[ResidencyPolicy]:
    rows = await conn.execute(sa.select(model_policies).order_by(model_policies.c.model))
    return [_policy(row) for row in rows]


# -- backends -------------------------------------------------------------------


async def add_backend(engine: AsyncEngine, name: str, url: str, *, parallel: int = 1) -> Backend:
    """Add an active backend. ``url`` is stored normalised
    (:func:`nz_core.backends.check_backend_url`).

    Raises:
        InvalidValue: a bad name, URL or ``parallel``.
        BackendExists: a backend has this name, or already points at this URL.
    """
    name = check_backend_name(name)
    url = check_backend_url(url)
    parallel = check_parallel(parallel)
    now = _now()
    try:
        async with connect(engine) as conn:
            await _refuse_duplicate(conn, name, url)
            await conn.execute(
                backends.insert().values(
                    name=name,
                    url=url,
                    parallel=parallel,
                    status=BackendStatus.ACTIVE.value,
                    created_at=now,
                    updated_at=now,
                )
            )
            return _backend(await _backend_row(conn, name))
    except IntegrityError:
        # Another writer added the same name or URL between the check and the insert.
        async with connect(engine) as conn:
            await _refuse_duplicate(conn, name, url)
        raise


async def _refuse_duplicate(conn: AsyncConnection, name: str, url: str) -> None:
    query = sa.select(backends.c.name, backends.c.url).where(
        sa.or_(backends.c.name == name, backends.c.url == url)
    )
    for row in await conn.execute(query):
        raise BackendExists(row.name, None if row.name == name else url)


async def get_backend(engine: AsyncEngine, name: str) -> Backend:
    """The stored backend called ``name``. Raises :class:`BackendNotFound`."""
    async with connect(engine) as conn:
        return _backend(await _backend_row(conn, _known_name(name)))


async def list_backends(engine: AsyncEngine) -> list[Backend]:
    """The stored backends, by name (none: ``OLLAMA_BASE_URL(S)`` define them)."""
    async with connect(engine) as conn:
        return await _stored_backends(conn)


async def _set_status(engine: AsyncEngine, name: str, status: BackendStatus) -> Backend:
    async with connect(engine) as conn:
        row = await _backend_row(conn, name)
        if row.status != status.value:
            await conn.execute(
                backends.update()
                .where(backends.c.id == row.id)
                .values(status=status.value, updated_at=_now())
            )
            row = await _backend_row(conn, name)
    return _backend(row)


async def drain_backend(engine: AsyncEngine, name: str) -> Backend:
    """Send no new requests to ``name``; those in flight finish. Draining a draining
    backend changes nothing. Raises :class:`BackendNotFound`."""
    return await _set_status(engine, _known_name(name), BackendStatus.DRAINING)


async def activate_backend(engine: AsyncEngine, name: str) -> Backend:
    """Route to ``name`` again after :func:`drain_backend`. Raises
    :class:`BackendNotFound`."""
    return await _set_status(engine, _known_name(name), BackendStatus.ACTIVE)


async def remove_backend(engine: AsyncEngine, name: str) -> Backend:
    """Delete ``name`` and return it as it was: no new request goes there, those in
    flight finish. Raises :class:`BackendNotFound`."""
    async with connect(engine) as conn:
        row = await _backend_row(conn, _known_name(name))
        await conn.execute(backends.delete().where(backends.c.id == row.id))
    return _backend(row)


# -- model policies -------------------------------------------------------------


async def set_model_policy(
    engine: AsyncEngine, model: str, *, num_ctx: int | None
) -> ResidencyPolicy:
    """Pin ``model``'s context size to ``num_ctx`` (every request gets it, whatever the
    client sent), or with ``None`` unpin it (clients' values capped at the model's
    context length). ``model`` is normalised (``llama3.2`` → ``llama3.2:latest``); it
    need not be installed anywhere yet.

    Raises:
        InvalidValue: no model named, a name no request can match, or ``num_ctx`` out
            of range.
    """
    name = model.strip()
    if not name:
        raise InvalidValue("name a model")
    # Requests are matched by ASCII names only (nz_core.models.model_key): a policy for
    # any other name would never apply.
    if not name.isascii() or not name.isprintable() or " " in name:
        raise InvalidValue(f"model name {name!r} must be ASCII without spaces")
    model = normalize_model(name)
    if num_ctx is not None:
        num_ctx = check_num_ctx(num_ctx)
    async with connect(engine) as conn:
        current = (
            await conn.execute(sa.select(model_policies).where(model_policies.c.model == model))
        ).first()
        if current is None:
            await conn.execute(
                model_policies.insert().values(model=model, num_ctx=num_ctx, updated_at=_now())
            )
        elif current.num_ctx != num_ctx:
            await conn.execute(
                model_policies.update()
                .where(model_policies.c.model == model)
                .values(num_ctx=num_ctx, updated_at=_now())
            )
        row = (
            await conn.execute(sa.select(model_policies).where(model_policies.c.model == model))
        ).one()
    return _policy(row)


async def list_model_policies(engine: AsyncEngine) -> list[ResidencyPolicy]:
    """Every model's residency policy, by model name."""
    async with connect(engine) as conn:
        return await _stored_policies(conn)


# -- what the gateway reads -----------------------------------------------------


async def load_topology(engine: AsyncEngine, configured: Sequence[Backend] = ()) -> Topology:
    """The backends in force and the model policies, in one transaction: the stored
    backends, or ``configured`` (:func:`nz_core.backends.configured_backends` of
    ``OLLAMA_BASE_URL(S)``) while none is stored."""
    async with connect(engine) as conn:
        stored = await _stored_backends(conn)
        policies = await _stored_policies(conn)
    chosen, from_configuration = effective_backends(stored, configured)
    return Topology(
        backends=chosen,
        configured=from_configuration,
        policies={policy.model: policy for policy in policies},
    )
