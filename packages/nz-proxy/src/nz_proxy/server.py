"""The serving process: Granian and its workers, and nothing else.

``neuronetz-gateway serve`` checks the settings and the database, then replaces itself
(``exec``, same pid) with ``python -m nz_proxy.server``. Granian forks its workers from
this process, so whatever it has imported every worker carries: run from the CLI, that
was Typer, Rich, Pygments and Alembic, about 8 MB per worker and 22 MB in the
supervisor (docs/benchmarks.md). Here it imports only Granian and the settings.
"""

from __future__ import annotations

import os
import sys
import tempfile

from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings
from granian.server import Server

from nz_proxy.settings import Settings, SettingsError, load_settings

__all__ = ["APP_FACTORY", "UNUSED_IN_WORKERS", "command", "leave_out_unused", "serve"]

APP_FACTORY = "nz_proxy.app:app_from_env"

# Installed for the CLI (Typer needs both), never used by the data plane, and loaded
# by libraries merely because they are importable: Litestar registers its pydantic
# plugins whenever pydantic imports (8 MB per worker), structlog renders exceptions
# with Rich whenever Rich imports (4 MB). Each library falls back when the import fails.
UNUSED_IN_WORKERS = ("pydantic", "rich")


def leave_out_unused() -> None:
    """Make :data:`UNUSED_IN_WORKERS` unimportable in this process and its workers."""
    for name in UNUSED_IN_WORKERS:
        sys.modules[name] = None  # type: ignore[assignment]  # makes the import fail


def command() -> list[str]:
    """The argv that starts this module with the running interpreter."""
    return [sys.executable, "-m", "nz_proxy.server"]


def serve(config: Settings) -> None:
    """Serve until SIGINT or SIGTERM. The workers read the same environment as
    ``config`` came from: Granian forks them from this process."""
    # Every worker writes its metrics here and /metrics sums them (prometheus-client's
    # multiprocess mode); a fresh directory per run, so old workers' gauges are gone.
    with tempfile.TemporaryDirectory(prefix="neuronetz-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        _granian(config)


def _granian(config: Settings) -> None:
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


def main() -> None:
    leave_out_unused()
    try:
        config = load_settings()
    except SettingsError as exc:
        sys.exit(f"error: {exc}")
    serve(config)


if __name__ == "__main__":
    main()
