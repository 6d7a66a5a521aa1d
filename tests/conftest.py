"""Fixtures shared by every suite: hypothesis profiles, and migrated databases on the
real PostgreSQL and on SQLite."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.database import create_engine
from nz_core.migrations import upgrade
from tests import services
from tests.processes import MockProcess, run_mock

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test session, migrated once, dropped after."""
    name = await services.create_database("session")
    url = services.pg_url(name)
    try:
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        await services.drop_database(name)


@pytest.fixture(scope="session")
async def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database file for this test session."""
    path: Path = tmp_path_factory.mktemp("sqlite") / "gateway.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(upgrade, url)  # Alembic runs its own event loop
    return url


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each database-backed test runs against PostgreSQL and against SQLite."""
    fixture = "postgres_url" if request.param == "postgres" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def mock_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProcess]:
    """One real `nz-mock-ollama` process for the whole session (unpaced, 24 tokens)."""
    with run_mock(
        tmp_path_factory.mktemp("mock"), "--token-rate", "0", "--response-tokens", "24"
    ) as mock:
        yield mock
