"""A real gateway (Granian, `neuronetz-gateway serve`) in front of a real mock Ollama,
in both storage modes: embedded (SQLite, in-process state) and production
(PostgreSQL and Redis)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.database import create_engine
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.limits import Limits
from nz_core.scopes import ALL_SCOPES, Scope
from tests import services
from tests.processes import (
    THREE_NODE_CATALOGUES,
    GatewayProcess,
    MockNodes,
    MockProcess,
    free_port,
    run_mock,
    run_mock_nodes,
    running_gateway,
)

HASHER = KeyHasher(TEST_HASH_PROFILE)
NO_LIMITS = Limits()


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


@dataclass
class Deployment:
    """One gateway with its database, state store and backend."""

    mode: str
    gateway: GatewayProcess
    mock: MockProcess
    database_url: str
    redis_url: str | None
    engine: AsyncEngine

    @property
    def url(self) -> str:
        return self.gateway.url

    async def tenant(
        self, *, models: Iterable[str] = (), allow_all: bool = False, limits: Limits = NO_LIMITS
    ) -> str:
        name = unique("tenant")
        await admin.create_tenant(
            self.engine, name, allow_all_models=allow_all, allowed_models=models, limits=limits
        )
        return name

    async def key(
        self,
        tenant: str | None = None,
        *,
        models: Iterable[str] = (),
        allow_all: bool = False,
        scopes: frozenset[Scope] = ALL_SCOPES,
        limits: Limits = NO_LIMITS,
    ) -> str:
        """A fresh key (of a fresh tenant unless one is named)."""
        if tenant is None:
            tenant = await self.tenant(models=models, allow_all=allow_all)
        created = await admin.create_key(
            self.engine, tenant, "e2e", scopes=scopes, limits=limits, hasher=HASHER
        )
        return created.key


def gateway_env(backend_url: str, database_url: str, redis_url: str | None) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "OLLAMA_BASE_URL": backend_url,
        # Quick discovery, so models pulled during a test show up at once.
        "MODEL_DISCOVERY_REFRESH_S": "1",
        "MODEL_DISCOVERY_CACHE_TTL_S": "30",
    }
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


@pytest.fixture(scope="session")
def e2e_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProcess]:
    """The backend of the shared deployments: its own process, so no other suite's
    resets or faults reach it."""
    with run_mock(
        tmp_path_factory.mktemp("e2e-mock"), "--token-rate", "0", "--response-tokens", "12"
    ) as mock:
        yield mock


MockNodesFactory = Callable[..., MockNodes]


@pytest.fixture
def mock_nodes(tmp_path: Path) -> Iterator[MockNodesFactory]:
    """Start three mock Ollama nodes in one process, with `THREE_NODE_CATALOGUES` unless
    told otherwise: `mock_nodes("--parallel", "1", "--load-delay", "2")`. Each node has its
    own state and control API (`/_mock/node`, `/_mock/stats`); all stop after the test."""
    with ExitStack() as stack:

        def start(
            *args: str, catalogues: Sequence[Sequence[str]] = THREE_NODE_CATALOGUES
        ) -> MockNodes:
            return stack.enter_context(run_mock_nodes(tmp_path, *args, catalogues=catalogues))

        yield start


@pytest.fixture(scope="session")
async def clean_redis() -> str:
    url = services.redis_url()
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    return url


@pytest.fixture(scope="session", params=["embedded", "production"])
async def deployment(
    request: pytest.FixtureRequest,
    e2e_mock: MockProcess,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_url: str,
    postgres_url: str,
    clean_redis: str,
) -> AsyncIterator[Deployment]:
    """The gateway in each storage mode, for the whole session."""
    embedded = request.param == "embedded"
    database_url = sqlite_url if embedded else postgres_url
    redis_url = None if embedded else clean_redis
    log_dir: Path = tmp_path_factory.mktemp(f"gateway-{request.param}")
    engine = create_engine(database_url)
    try:
        with running_gateway(log_dir, gateway_env(e2e_mock.url, database_url, redis_url)) as gw:
            yield Deployment(request.param, gw, e2e_mock, database_url, redis_url, engine)
    finally:
        await engine.dispose()


@dataclass
class Rig:
    """A gateway of its own in front of a mock of its own."""

    gateway: GatewayProcess
    mock: MockProcess | None
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def faults(self, **faults: object) -> None:
        assert self.mock is not None
        httpx.post(self.mock.url + "/_mock/faults", json=faults).raise_for_status()

    def mock_stats(self) -> dict[str, Any]:
        assert self.mock is not None
        stats: dict[str, Any] = httpx.get(self.mock.url + "/_mock/stats").json()
        return stats

    def post(self, path: str, body: object) -> httpx.Response:
        return httpx.post(self.gateway.url + path, headers=self.auth, json=body, timeout=30)


RigFactory = Callable[..., Rig]


@pytest.fixture
async def rig(deployment: Deployment, tmp_path: Path) -> AsyncIterator[RigFactory]:
    """Build a gateway (in ``deployment``'s storage mode) in front of a new mock, with a
    key allowed every model. Breaker state and faults stay with the test."""
    tenant = unique("rig")
    await admin.create_tenant(deployment.engine, tenant, allow_all_models=True)
    key = (await admin.create_key(deployment.engine, tenant, "k", hasher=HASHER)).key
    stack = ExitStack()

    def build(*mock_args: str, dead_backend: bool = False, **env: str) -> Rig:
        mock = None if dead_backend else stack.enter_context(run_mock(tmp_path, *mock_args))
        backend_url = mock.url if mock is not None else f"http://127.0.0.1:{free_port()}"
        # Replicas that share a Redis share a backend: a rig with its own backend
        # gets its own (emptied) Redis database.
        redis_url = None
        if deployment.redis_url is not None:
            redis_url = services.redis_url(services.REDIS_DB + 1)
            with redis.Redis.from_url(redis_url) as client:
                client.flushdb()
        settings = gateway_env(backend_url, deployment.database_url, redis_url)
        settings.update(env)
        gateway = stack.enter_context(running_gateway(tmp_path, settings))
        return Rig(gateway, mock, key)

    with stack:
        yield build
