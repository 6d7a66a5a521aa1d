"""``neuronetz-gateway serve``: the data plane on Granian (ASGI)."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from typing import Annotated

import typer
from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings
from granian.server import Server

from nz_cli.runner import fail
from nz_core.database import create_engine
from nz_core.errors import DatabaseUnreachable, NotMigrated
from nz_core.migrations import ensure_migrated
from nz_proxy.settings import Settings, SettingsError, load_settings

__all__ = ["check_database", "register", "run_granian", "serve", "serving_settings"]

APP_FACTORY = "nz_proxy.app:app_from_env"


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


def run_granian(config: Settings) -> None:
    """Serve until SIGINT or SIGTERM. The workers read their settings from the
    environment, so the overrides are exported to it first."""
    os.environ["GATEWAY_HOST"] = config.gateway_host
    os.environ["GATEWAY_PORT"] = str(config.gateway_port)
    os.environ["GATEWAY_WORKERS"] = str(config.gateway_workers)
    # Every worker writes its metrics here and /metrics sums them (prometheus-client's
    # multiprocess mode); a fresh directory per run, so old workers' gauges are gone.
    metrics_dir = tempfile.TemporaryDirectory(prefix="neuronetz-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
    with metrics_dir:
        _serve(config)


def _serve(config: Settings) -> None:
    Server(
        APP_FACTORY,
        factory=True,
        interface=Interfaces.ASGI,
        address=config.gateway_host,
        port=config.gateway_port,
        workers=config.gateway_workers,
        http=HTTPModes.http1,
        websockets=False,
        # Measured on the benchmark's floor rig: uvloop carries ~1.5x the requests
        # of the asyncio loop at the same CPU (docs/benchmarks.md).
        loop=Loops.uvloop,
        log_access=False,
        # Slow or idle clients: a connection that has not sent its headers in 10 s is
        # closed (Granian's default, 30 s, let ~1,000 idle sockets hold every slot),
        # and each worker takes far more connections than the default 1024 / workers.
        http1_settings=HTTP1Settings(header_read_timeout=10_000),
        backlog=4096,
        backpressure=4096,
        respawn_failed_workers=True,
        # In-flight streams get this long to finish on shutdown (SPEC §4, step 6).
        workers_kill_timeout=30,
    ).serve()


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
    run_granian(config)


def register(app: typer.Typer) -> None:
    app.command(name="serve")(serve)
