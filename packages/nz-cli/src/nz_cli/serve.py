"""``neuronetz-gateway serve``: the data plane on Granian (ASGI)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated, NoReturn

import typer

from nz_cli.runner import fail
from nz_core.database import create_engine
from nz_core.errors import DatabaseUnreachable, NotMigrated
from nz_core.migrations import ensure_migrated
from nz_proxy import server
from nz_proxy.settings import Settings, SettingsError, load_settings

__all__ = ["become_server", "check_database", "register", "serve", "serving_settings"]


def serving_settings(host: str | None, port: int | None, workers: int | None) -> Settings:
    """Settings with the command-line overrides, refusing what cannot work."""
    try:
        config = load_settings(gateway_host=host, gateway_port=port, gateway_workers=workers)
    except SettingsError as exc:
        fail(str(exc))
    if config.gateway_workers > 1 and config.redis_url is None:
        fail(
            f"GATEWAY_WORKERS={config.gateway_workers} needs REDIS_URL: without Redis the"
            " limits live in one process, and several would multiply them"
        )
    return config


def check_database(config: Settings) -> None:
    """Refuse to start on an unmigrated database; start anyway (failing closed, 503)
    when it is merely unreachable, so the gateway recovers once it comes back."""

    async def check() -> None:
        engine = create_engine(config.database_url)
        try:
            await ensure_migrated(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except NotMigrated as exc:
        fail(str(exc))
    except DatabaseUnreachable as exc:
        print(f"warning: {exc}; serving 503 until it is back", file=sys.stderr)


def become_server(config: Settings) -> NoReturn:
    """Become the serving process (:mod:`nz_proxy.server`), keeping this pid, with the
    command-line overrides in the environment it reads."""
    os.environ["GATEWAY_HOST"] = config.gateway_host
    os.environ["GATEWAY_PORT"] = str(config.gateway_port)
    os.environ["GATEWAY_WORKERS"] = str(config.gateway_workers)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = server.command()
    os.execv(argv[0], argv)  # noqa: S606 - our own interpreter and module


def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (GATEWAY_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (GATEWAY_PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (GATEWAY_WORKERS); >1 needs REDIS_URL.")
    ] = None,
) -> None:
    """Run the gateway (the data plane) on Granian."""
    config = serving_settings(host, port, workers)
    check_database(config)
    become_server(config)


def register(app: typer.Typer) -> None:
    app.command(name="serve")(serve)
