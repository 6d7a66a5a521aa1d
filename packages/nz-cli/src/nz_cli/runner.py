"""How every command runs: settings, one engine, one-line errors, a clean exit code.

Failures an operator can fix (bad input, an unknown name, an unreachable or unmigrated
database) print exactly one line, ``error: …``, on stderr and exit with status 1, and
nothing has been written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.database import create_engine
from nz_core.errors import NzError
from nz_core.migrations import ensure_migrated
from nz_proxy.settings import Settings, SettingsError, load_settings

__all__ = ["emit", "fail", "run_admin", "settings"]

T = TypeVar("T")


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on one line of stderr and exit 1."""
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    typer.echo(f"error: {first_line}", err=True)
    raise typer.Exit(1)


def settings() -> Settings:
    """The settings from the environment, or a one-line error naming the variable."""
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))


def run_admin(operation: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``operation`` against a migrated ``DATABASE_URL``; errors become one line."""
    config = settings()

    async def run() -> T:
        engine = create_engine(config.database_url)
        try:
            await ensure_migrated(engine)
            return await operation(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except NzError as exc:
        fail(str(exc))


def emit(as_json: bool, data: Any, lines: list[str]) -> None:
    """Print ``data`` as one JSON document, or ``lines`` for people."""
    if as_json:
        typer.echo(json.dumps(data, default=str))
    else:
        for line in lines:
            typer.echo(line)
