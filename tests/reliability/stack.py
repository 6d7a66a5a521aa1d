"""A whole production deployment of private processes, so faults can be injected.

The shared PostgreSQL and Redis of the other tests must never be stopped, so this stack
runs its own: a PostgreSQL cluster made with ``initdb`` (run as the ``postgres`` user,
since PostgreSQL refuses root), a ``redis-server``, the mock Ollama on a fixed port and
the gateway on a fixed port, each of which can be stopped, frozen or killed and brought
back where clients expect it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from nz_core import admin
from nz_core.database import create_engine
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.limits import Limits
from tests.processes import (
    GatewayProcess,
    RedisServer,
    free_port,
    gateway_command,
    mock_command,
    start_gateway,
    stop_gateway,
    stop_process,
    wait_for_port,
)

__all__ = ["PrivatePostgres", "Stack", "Tenant", "stack"]

HASHER = KeyHasher(TEST_HASH_PROFILE)
LEASE_S = 3.0  # short, so a leaked slot would show within the test
# Short, so the rows of a killed gateway are reaped within the test (default 60 s).
JOURNAL_GRACE_S = 5.0
# Real limits and budgets, so every counter is exercised, but high enough never to deny.
TENANT_LIMITS = Limits(rpm=100_000, tpm=100_000_000, concurrent=50)
BUDGET = 10**12


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return str(found[-1])


def _as_postgres(argv: list[str]) -> list[str]:
    # PostgreSQL will not run as root; the tests usually do.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster on its own port, trust authentication."""

    port: int
    data: Path
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        subprocess.run(
            _as_postgres(
                [_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-N"]
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        options += " -c fsync=off -c max_connections=200"
        pg_ctl = [_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log)]
        subprocess.run(
            _as_postgres([*pg_ctl, "-o", options, "-w", "start"]),
            check=True,
            capture_output=True,
        )
        wait_for_port(self.port, timeout=20)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=False,
            capture_output=True,
        )

    def pids(self) -> list[int]:
        """The postmaster and every backend and helper it started."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [postmaster, *map(int, children)]

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


@dataclass
class Mock:
    """The mock Ollama on a fixed port, so it can be killed and come back there."""

    port: int
    log_dir: Path
    args: tuple[str, ...]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with (self.log_dir / f"mock-{self.port}.log").open("ab") as sink:
            self.process = subprocess.Popen(
                mock_command("--port", str(self.port), *self.args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.process = None

    def faults(self, **faults: object) -> None:
        httpx.post(self.url + "/_mock/faults", json=faults, timeout=5).raise_for_status()


@dataclass(frozen=True)
class Tenant:
    name: str
    key: str

    @property
    def prefix(self) -> str:
        return self.key[:12]


@dataclass
class Stack:
    """Everything a production deployment runs, each part under the test's control."""

    scratch: Path
    postgres: PrivatePostgres
    redis: RedisServer
    mock: Mock
    gateway_port: int
    env: dict[str, str]
    gateway: GatewayProcess | None = None
    tenants: list[Tenant] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start_gateway(self) -> None:
        self.gateway = start_gateway(self.scratch, self.env, port=self.gateway_port)

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            stop_gateway(self.gateway)
        self.gateway = None

    def kill_gateway(self) -> None:
        """``kill -9`` the whole gateway: the main process and its workers."""
        assert self.gateway is not None
        self.gateway.kill(signal.SIGKILL)
        self.gateway.process.wait()
        self.gateway = None

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, socket_timeout=5)

    async def add_tenants(self, label: str, count: int = 3) -> list[Tenant]:
        """``count`` tenants with one key each: allowed every model, budgets and limits
        set (high enough not to deny the traffic) so that every counter is exercised."""
        engine = create_engine(self.postgres.url)
        made = []
        try:
            for index in range(count):
                name = f"{label}-{index}"
                await admin.create_tenant(engine, name, allow_all_models=True)
                created = await admin.create_key(
                    engine, name, "k", hasher=HASHER, limits=TENANT_LIMITS
                )
                prefix = created.key[:12]
                await admin.set_budget(engine, prefix, daily=BUDGET, monthly=BUDGET, total=BUDGET)
                made.append(Tenant(name, created.key))
        finally:
            await engine.dispose()
        self.tenants += made
        return made


def _migrate(database_url: str, scratch: Path) -> None:
    subprocess.run(
        gateway_command("migrate"),
        env={**os.environ, "DATABASE_URL": database_url},
        cwd=scratch,
        check=True,
        capture_output=True,
    )


@contextmanager
def stack(**env: str) -> Iterator[Stack]:
    """Start PostgreSQL, Redis, the mock and the gateway; stop all of them after."""
    if shutil.which("runuser") is None and os.geteuid() == 0:
        raise RuntimeError("runuser is needed to start PostgreSQL as the postgres user")
    scratch = Path(tempfile.mkdtemp(prefix="nz-reliability-"))
    shutil.chown(scratch, "postgres", "postgres")  # it writes its cluster and log here
    data = scratch / "pgdata"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    postgres = PrivatePostgres(free_port(), data, scratch / "postgres.log")
    server = RedisServer(free_port(), scratch)
    mock = Mock(free_port(), scratch, ("--token-rate", "200"))
    with contextlib.ExitStack() as cleanup:
        if not os.environ.get("NZ_RELIABILITY_KEEP"):  # set it to read the logs after
            cleanup.callback(shutil.rmtree, scratch, True)
        postgres.init()
        postgres.start()
        cleanup.callback(postgres.stop, "immediate")
        cleanup.callback(postgres.signal, signal.SIGCONT)  # never leave it frozen
        server.start()
        cleanup.callback(server.stop)
        mock.start()
        cleanup.callback(mock.stop)
        _migrate(postgres.url, scratch)
        built = Stack(
            scratch,
            postgres,
            server,
            mock,
            free_port(),
            {
                "DATABASE_URL": postgres.url,
                "REDIS_URL": server.url,
                "OLLAMA_BASE_URL": mock.url,
                "GATEWAY_WORKERS": "2",
                "CONCURRENCY_LEASE_S": str(LEASE_S),
                "AUDIT_JOURNAL_GRACE_S": str(JOURNAL_GRACE_S),
                "UPSTREAM_READ_TIMEOUT_S": "2",
                "CIRCUIT_BREAKER_RESET_S": "1",
                **env,
            },
        )
        built.start_gateway()
        cleanup.callback(built.stop_gateway)
        yield built


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    last = ""
    with contextlib.suppress(httpx.HTTPError):
        last = httpx.get(url + "/readyz", timeout=2).text
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


async def settle_time() -> None:
    """Past the lease, so that anything a fault left behind would have been reaped."""
    await asyncio.sleep(LEASE_S + 1.5)
