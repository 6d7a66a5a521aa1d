"""Alembic environment for both PostgreSQL (schema ``gateway``) and SQLite."""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from nz_core.database import DEFAULT_DATABASE_URL, create_engine, normalize_url
from nz_core.schema import SCHEMA, metadata

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = config.get_main_option("sqlalchemy.url") or os.environ.get(
    "DATABASE_URL", DEFAULT_DATABASE_URL
)
url = normalize_url(url)


def _sqlite_metadata() -> sa.MetaData:
    # SQLite has no schemas: compare against a copy of the tables without one.
    copy = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(copy, schema=None)
    return copy


def _include_name(name: str | None, type_: str, _parent: object) -> bool:
    # Only our own schema matters on a shared PostgreSQL server.
    return name == SCHEMA if type_ == "schema" else True


def _run(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        context.configure(
            connection=connection,
            target_metadata=_sqlite_metadata(),
            render_as_batch=True,
        )
    else:
        connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=SCHEMA,
            include_schemas=True,
            include_name=_include_name,
        )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
asyncio.run(_run_online())
