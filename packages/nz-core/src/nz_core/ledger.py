"""The audit log and the budget ledger, written together (SPEC §4.8).

:func:`record` takes a batch of finished requests and, in one transaction, inserts their
audit rows (idempotent on the row id, so a retried or re-reaped batch counts once),
adds the tokens of the rows that were new to ``budget_usage`` for the day, the month and
all time of each request, notes ``last_used_at``, and stores opted-in prompts. The
ledger therefore always equals the sum of the audit tokens, and it is the source of
truth from which live budget counters are rebuilt (:func:`period_tokens`).

When the database refuses a batch for what it holds (a value it cannot store, such as
NUL in a text column on PostgreSQL, or a constraint), :func:`record` raises
:class:`RowsRefused` and writes nothing: the caller can split the batch and write the
parts on their own, since each call is one transaction and idempotent on the row ids
(rows written once, ledger once, however the batch is cut).

``DatabaseError`` (:mod:`nz_core.errors`)
    ``RowsRefused``: the same rows will be refused again; retrying them as they are is
    pointless, the database itself is fine.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nz_core.budgets import Period, PeriodCalendar
from nz_core.database import connect
from nz_core.errors import RowsRefused
from nz_core.schema import SCHEMA, api_keys, audit_log, budget_usage, prompt_log

__all__ = ["AUDIT_COLUMNS", "RowsRefused", "delete_expired_prompts", "period_tokens", "record"]

AUDIT_COLUMNS = tuple(column.name for column in audit_log.columns)
# A row may leave out a nullable column (``backend``, added with several nodes): NULL.
_OPTIONAL_COLUMNS = frozenset(column.name for column in audit_log.columns if column.nullable)


def _column(row: Mapping[str, Any], name: str) -> Any:
    return row.get(name) if name in _OPTIONAL_COLUMNS else row[name]


# SQLSTATE classes that are about the values sent: 22 data exception (NUL in text,
# a number out of range), 23 integrity constraint violation (CHECK, NOT NULL, foreign
# key). Everything else (connection, resources, locks, permissions) says nothing about
# the rows and is not a refusal: the rows are kept and retried.
_REFUSING_CLASSES = frozenset({"22", "23"})


def _refusal(exc: BaseException) -> str | None:
    """Why the database refused a value in the batch, or None if ``exc`` is not that."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return None
    # The drivers' own encoders refuse before anything is sent: sqlite3 a lone
    # surrogate (UnicodeEncodeError) or an integer beyond 64 bits (OverflowError).
    cause = exc.orig if isinstance(exc, StatementError) else exc
    if isinstance(cause, (UnicodeError, OverflowError)):
        return type(cause).__name__
    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(sqlstate, str) and sqlstate[:2] in _REFUSING_CLASSES:
        # asyncpg's own error (the translated one's cause) names the constraint.
        detail = getattr(orig.__cause__, "constraint_name", None) if orig else None
        kind = type(orig.__cause__).__name__ if orig and orig.__cause__ else "DBAPIError"
        return f"{kind} ({sqlstate}{', ' + detail if detail else ''})"
    if isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError)):
        # SQLite's messages name the constraint or column, never the value.
        lines = str(orig).strip().splitlines()
        return lines[0][:200] if lines else type(orig).__name__
    return None


# PostgreSQL takes a whole batch as one array per column: one short statement instead
# of SQLAlchemy rendering a VALUES row per request. A flush then costs the event loop
# about half as much, and it was the flush that set the gateway's p99 at low load
# (docs/benchmarks.md). The casts come from the table, so they cannot drift from it.
def _pg_audit_insert() -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    arrays = ", ".join(
        f"${index}::{column.type.compile(dialect=dialect)}[]"
        for index, column in enumerate(audit_log.columns, start=1)
    )
    columns = ", ".join(AUDIT_COLUMNS)
    # Only names from our own schema are interpolated; every value is bound ($n).
    return (
        f"INSERT INTO {SCHEMA}.{audit_log.name} ({columns}) "  # noqa: S608
        f"SELECT * FROM unnest({arrays}) ON CONFLICT (id) DO NOTHING RETURNING id"
    )


_PG_AUDIT_INSERT = _pg_audit_insert()


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def ledger_deltas(
    rows: Iterable[Mapping[str, Any]], tz: ZoneInfo
) -> dict[tuple[int, str, datetime], int]:
    """Tokens per (key id, period, period start) for the rows' own timestamps."""
    deltas: dict[tuple[int, str, datetime], int] = defaultdict(int)
    calendar = PeriodCalendar(tz)
    for row in rows:
        tokens = int(row["tokens_in"]) + int(row["tokens_out"])
        if row.get("key_id") is None or tokens <= 0:
            continue
        for period in Period:
            start, _ = calendar.bounds(period, row["ts"])
            deltas[(row["key_id"], period.value, start)] += tokens
    return dict(deltas)


async def _insert_audit(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> set[uuid.UUID]:
    """Insert the rows that are new; the ids of those."""
    if conn.dialect.name == "postgresql":
        columns = tuple([_column(row, name) for row in rows] for name in AUDIT_COLUMNS)
        result = await conn.exec_driver_sql(_PG_AUDIT_INSERT, columns)
    else:
        statement = (
            sqlite.insert(audit_log)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(audit_log.c.id)
        )
        values = [{name: _column(row, name) for name in AUDIT_COLUMNS} for row in rows]
        result = await conn.execute(statement, values)
    return {row_id for (row_id,) in result.all()}


async def record(
    engine: AsyncEngine,
    rows: Sequence[Mapping[str, Any]],
    tz: ZoneInfo,
    prompts: Sequence[Mapping[str, Any]] = (),
) -> set[uuid.UUID]:
    """Write a batch of finished requests; returns the ids that were not there yet.

    Each row has the audit columns (nullable ones may be left out) plus ``key_id``
    (``None`` when no key was verified).
    Audit rows, ledger, ``last_used_at`` and prompts are one transaction: all or nothing.

    Raises:
        RowsRefused: a value in the batch cannot be stored (nothing was written).
        DatabaseUnreachable: nothing was written.
    """
    if not rows and not prompts:
        return set()
    # The same request can arrive twice in one batch (its own row and a reaped copy):
    # the first one counts.
    unique: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        unique.setdefault(row["id"], row)
    rows = list(unique.values())
    async with connect(engine) as conn:
        try:
            return await _write(conn, rows, tz, prompts)
        except Exception as exc:
            # Translated here, inside the transaction: ``connect`` would report some
            # driver errors as an unreachable database, and the batch must roll back.
            reason = _refusal(exc)
            if reason is None:
                raise
            raise RowsRefused(f"database refused the batch: {reason}") from exc


async def _write(
    conn: AsyncConnection,
    rows: Sequence[Mapping[str, Any]],
    tz: ZoneInfo,
    prompts: Sequence[Mapping[str, Any]],
) -> set[uuid.UUID]:
    inserted: set[uuid.UUID] = set()
    if rows:
        inserted = await _insert_audit(conn, rows)
    fresh = [row for row in rows if row["id"] in inserted]
    deltas = ledger_deltas(fresh, tz)
    if deltas:
        upsert = _insert(conn, budget_usage)
        upsert = upsert.on_conflict_do_update(
            index_elements=["key_id", "period", "period_start"],
            set_={"tokens": budget_usage.c.tokens + upsert.excluded.tokens},
        )
        await conn.execute(
            upsert,
            [
                {"key_id": key, "period": period, "period_start": start, "tokens": tokens}
                for (key, period, start), tokens in sorted(deltas.items())
            ],
        )
    last_used: dict[int, datetime] = {}
    for row in fresh:
        key_id = row.get("key_id")
        if key_id is not None and (key_id not in last_used or row["ts"] > last_used[key_id]):
            last_used[key_id] = row["ts"]
    if last_used:
        await conn.execute(
            api_keys.update()
            .where(
                api_keys.c.id == sa.bindparam("key"),
                sa.or_(
                    api_keys.c.last_used_at.is_(None),
                    api_keys.c.last_used_at < sa.bindparam("seen"),
                ),
            )
            .values(last_used_at=sa.bindparam("seen")),
            [{"key": key, "seen": seen} for key, seen in sorted(last_used.items())],
        )
    if prompts:
        await conn.execute(
            _insert(conn, prompt_log).on_conflict_do_nothing(index_elements=["id"]),
            list(prompts),
        )
    return inserted


async def period_tokens(engine: AsyncEngine, key_id: int, period: Period, start: datetime) -> int:
    """The tokens the ledger holds for one key and period (0 when none)."""
    async with connect(engine) as conn:
        value = await conn.scalar(
            sa.select(budget_usage.c.tokens).where(
                budget_usage.c.key_id == key_id,
                budget_usage.c.period == period.value,
                budget_usage.c.period_start == start,
            )
        )
    return int(value or 0)


async def delete_expired_prompts(engine: AsyncEngine, now: datetime, limit: int = 5000) -> int:
    """Delete up to ``limit`` prompt-log rows past their retention; returns how many."""
    async with connect(engine) as conn:
        expired = (
            sa.select(prompt_log.c.id).where(prompt_log.c.expires_at < now).limit(limit)
        ).scalar_subquery()
        result = await conn.execute(prompt_log.delete().where(prompt_log.c.id.in_(expired)))
    return int(result.rowcount or 0)
