"""Engines for the two supported databases, and the checks every caller needs first.

PostgreSQL (asyncpg) is the production store; SQLite (aiosqlite, WAL) is the embedded
default. The schema is written once for PostgreSQL's ``gateway`` schema; SQLite engines
translate that schema name away so the same tables and statements work on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import sqlalchemy as sa
from asyncpg import PostgresError
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from nz_core.errors import DatabaseUnreachable, NotMigrated
from nz_core.schema import SCHEMA

__all__ = [
    "DEFAULT_DATABASE_URL",
    "UNREACHABLE_ERRORS",
    "connect",
    "create_engine",
    "describe_error",
    "is_sqlite",
    "normalize_url",
    "redact_url",
]

DEFAULT_DATABASE_URL: Final = "sqlite+aiosqlite:///./neuronetz.db"

# Errors that mean "the server is not there (or will not let us in)", as opposed to a
# bad statement. asyncpg raises its own errors unwrapped while connecting (unknown
# database, bad password); inside a transaction SQLAlchemy wraps them.
UNREACHABLE_ERRORS: Final = (OSError, TimeoutError, InterfaceError, OperationalError, PostgresError)


def normalize_url(url: str) -> str:
    """Pick the async driver for URLs written without one (``postgresql://``, ``sqlite://``)."""
    url = url.strip()
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def is_sqlite(url: str) -> bool:
    return normalize_url(url).startswith("sqlite")


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for messages and logs."""
    try:
        return sa.make_url(normalize_url(url)).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid database URL>"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the gateway's readers run beside the audit writer; foreign keys are off
    # by default in SQLite and carry invariants here; busy_timeout waits out the CLI.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    """An async engine for ``url`` (PostgreSQL or SQLite), configured for this schema.

    Raises:
        DatabaseUnreachable: the URL cannot be parsed or names an unsupported driver.
    """
    url = normalize_url(url)
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise DatabaseUnreachable("DATABASE_URL is not a valid database URL") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine.execution_options(schema_translate_map={SCHEMA: None})
    if parsed.get_backend_name() == "postgresql":
        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            # A dead server must fail fast, not hang the caller on TCP retries.
            connect_args={"timeout": 5, "command_timeout": 30},
        )
    raise DatabaseUnreachable(
        f"unsupported database '{parsed.get_backend_name()}' (use postgresql or sqlite)"
    )


@asynccontextmanager
async def connect(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction on ``engine`` that reports an unreachable or unmigrated database as
    :class:`DatabaseUnreachable` or :class:`NotMigrated` instead of a driver error."""
    try:
        async with engine.begin() as conn:
            yield conn
    except ProgrammingError as exc:
        if _is_missing_table(exc):
            raise NotMigrated from None
        raise
    except DBAPIError as exc:
        # A connection the server dropped (restart, terminated backend) surfaces as
        # whatever error the statement met; SQLAlchemy marks it as a disconnect.
        if exc.connection_invalidated or isinstance(exc, (InterfaceError, OperationalError)):
            if isinstance(exc, OperationalError) and _is_missing_table(exc):
                raise NotMigrated from None
            raise DatabaseUnreachable(describe_error(exc)) from None
        raise
    except UNREACHABLE_ERRORS as exc:
        if isinstance(exc, OperationalError) and _is_missing_table(exc):
            raise NotMigrated from None
        raise DatabaseUnreachable(describe_error(exc)) from None


def _is_missing_table(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "no such table" in text or "does not exist" in text


def describe_error(exc: BaseException) -> str:
    """One line about a driver error: its first line, never the statement or values."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return text[:200]
