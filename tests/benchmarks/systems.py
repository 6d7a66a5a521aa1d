"""The systems under test, each started in front of a given backend.

- neuronetz, production: PostgreSQL (a fresh database) and a private redis-server, so
  ``INFO commandstats`` counts nothing but this gateway; every feature on.
- neuronetz, embedded: SQLite and in-process state.
- the floor rig (``floor.py``) on Granian.
- LiteLLM (``peer.py``).

All of them run one worker process: the machine has two cores and the load
generator, the backend and the stores need the other.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from nz_core import admin
from nz_core.database import create_engine
from nz_core.keys import DEFAULT_HASH_PROFILE, KeyHasher
from nz_core.limits import LIMIT_MAX, Limits
from tests import services
from tests.processes import (
    GatewayProcess,
    free_port,
    private_redis,
    start_gateway,
    stop_gateway,
    wait_for_port,
)

__all__ = ["Neuronetz", "floor_rig", "neuronetz"]

# High enough that nothing is denied, low enough to be real limits with real counters.
BENCH_LIMITS = Limits(rpm=LIMIT_MAX, tpm=LIMIT_MAX, concurrent=100_000)
BENCH_BUDGET = 10**15
WORKER_ENV = {"GATEWAY_WORKERS": "1"}


@dataclass
class Neuronetz:
    """A running gateway with a key, and the handles the figures need."""

    mode: str
    gateway: GatewayProcess
    key: str
    database: str | None = None
    redis_url: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def pid(self) -> int:
        return self.gateway.process.pid


async def _provision(database_url: str) -> str:
    """A tenant allowed every model, and a key with high limits and a budget."""
    engine = create_engine(database_url)
    try:
        await admin.create_tenant(engine, "bench", allow_all_models=True, limits=BENCH_LIMITS)
        # The production argon2 profile: the benchmark shows it is paid only on warm-up.
        created = await admin.create_key(
            engine, "bench", "load", hasher=KeyHasher(DEFAULT_HASH_PROFILE)
        )
        await admin.set_budget(
            engine, created.record.prefix, daily=BENCH_BUDGET, monthly=BENCH_BUDGET
        )
        return created.key
    finally:
        await engine.dispose()


def _migrate(database_url: str, scratch: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "nz_cli", "migrate"],
        check=True,
        capture_output=True,
        env={**os.environ, "DATABASE_URL": database_url},
        cwd=scratch,
    )


@contextmanager
def neuronetz(
    mode: str, backend: str, scratch: Path, backends: tuple[str, ...] = ()
) -> Iterator[Neuronetz]:
    """Start the gateway in ``mode`` (production or embedded) in front of ``backend``
    (or of every node of ``backends``)."""
    with ExitStack() as stack:
        redis_url: str | None = None
        database: str | None = None
        if mode == "production":
            redis_url = stack.enter_context(private_redis(scratch)).url
            database = asyncio.run(services.create_database("bench"))
            stack.callback(lambda: asyncio.run(services.drop_database(database)))
            database_url = services.pg_url(database)
        else:
            database_url = f"sqlite+aiosqlite:///{scratch}/bench-{free_port()}.db"
        _migrate(database_url, scratch)
        key = asyncio.run(_provision(database_url))
        env = {"DATABASE_URL": database_url, "OLLAMA_BASE_URL": backend, **WORKER_ENV}
        if backends:
            env["OLLAMA_BASE_URLS"] = ",".join(backends)
        if redis_url is not None:
            env["REDIS_URL"] = redis_url
        gateway = start_gateway(scratch, env)
        stack.callback(stop_gateway, gateway)
        yield Neuronetz(mode, gateway, key, database, redis_url)


@contextmanager
def floor_rig(backend: str, scratch: Path) -> Iterator[tuple[str, int]]:
    """Granian with the bare pass-through; yields its URL and root pid."""
    port = free_port()
    repo = Path(__file__).resolve().parents[2]
    with (scratch / f"floor-{port}.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--http",
                "1",
                "--no-ws",
                "--loop",
                "uvloop",
                "--workers",
                "1",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "tests.benchmarks.floor:app",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FLOOR_UPSTREAM": backend},
            cwd=repo,
            start_new_session=True,
        )
    try:
        wait_for_port(port, process, timeout=20)
        httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=5).raise_for_status()
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=20)


async def pg_transactions(database: str) -> int:
    """Committed plus rolled-back transactions of one database so far."""
    conn = await asyncpg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, database="postgres"
    )
    try:
        # The statistics collector reports with a delay; force a fresh snapshot.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
            database,
        )
    finally:
        await conn.close()
    return int(value)
