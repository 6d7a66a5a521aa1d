"""Schema migrations: one linear Alembic history that upgrades PostgreSQL and SQLite.

The history lives in the repository's ``alembic/`` directory; wheels carry a copy inside
this package (``nz_core/_alembic``) so an installed gateway can migrate itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.database import UNREACHABLE_ERRORS, connect, describe_error, is_sqlite, normalize_url
from nz_core.errors import DatabaseUnreachable, NotMigrated
from nz_core.schema import SCHEMA

__all__ = ["alembic_config", "current_revision", "ensure_migrated", "head_revision", "upgrade"]

VERSION_TABLE = "alembic_version"


def _script_location() -> Path:
    packaged = Path(__file__).parent / "_alembic"
    if packaged.is_dir():
        return packaged
    # A source checkout: packages/nz-core/src/nz_core → the repository root.
    return Path(__file__).resolve().parents[4] / "alembic"


def alembic_config(url: str) -> Config:
    """An Alembic configuration for ``url`` that needs no ``alembic.ini``."""
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    # ConfigParser interpolates '%'; URLs may contain percent-encoded passwords.
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Upgrade the database at ``url`` to the newest schema. Idempotent.

    Synchronous (Alembic runs its own event loop); call it from a thread when a loop is
    already running.

    Raises:
        DatabaseUnreachable: the database cannot be reached or refuses the connection.
    """
    # Imported here: the runtime half of Alembic is only needed to migrate, and every
    # CLI start would otherwise pay for it.
    from alembic import command

    try:
        command.upgrade(alembic_config(url), "head")
    except UNREACHABLE_ERRORS as exc:
        raise DatabaseUnreachable(describe_error(exc)) from None


def head_revision() -> str:
    """The newest revision in the migration history."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError("the migration history is empty")
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or ``None`` when it was never migrated."""
    url = engine.url.render_as_string(hide_password=False)
    table = sa.table(VERSION_TABLE, sa.column("version_num"))
    if is_sqlite(url):
        # Connecting would create an empty file where a typo'd path points.
        database = engine.url.database
        if database and database != ":memory:" and not os.path.exists(database):  # noqa: ASYNC240
            return None
    else:
        table.schema = SCHEMA
    try:
        async with connect(engine) as conn:
            row = (await conn.execute(sa.select(table.c.version_num))).first()
    except NotMigrated:
        return None
    return None if row is None else str(row[0])


async def ensure_migrated(engine: AsyncEngine) -> None:
    """Raise unless the database is reachable and at the newest revision.

    Raises:
        DatabaseUnreachable: the database cannot be reached.
        NotMigrated: the schema is missing or older than this code.
    """
    if await current_revision(engine) != head_revision():
        raise NotMigrated
