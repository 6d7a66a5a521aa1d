"""The compatibility rig: the mock Ollama, the gateway in front of it (embedded
storage, a real process), and Open WebUI in front of the gateway, installed in a
throwaway environment. On demand only (marker ``compat``, deselected by default):

    uv run pytest -m compat tests/compat

The figures the suite measures (install and start-up time, calls and prompt tokens
per message, listing calls per page load) are printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.database import create_engine
from nz_core.limits import Limits
from nz_core.migrations import upgrade
from tests.compat.install import OPEN_WEBUI, Installed, install
from tests.compat.openwebui import OpenWebUIProcess, WebUI, running_open_webui
from tests.e2e.conftest import HASHER, unique
from tests.processes import GatewayProcess, MockProcess, run_mock, running_gateway

FIGURES = pytest.StashKey[dict[str, str]]()
ADMIN = {"name": "Admin", "email": "admin@example.com", "password": "compat-Passw0rd!"}
# Open WebUI's title, tags and follow-ups run beside the answer; paced answers make
# them overlap as they do with a real model.
MOCK_ARGS = ("--token-rate", "50", "--response-tokens", "24")


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> dict[str, str]:
    """What the run measured, printed in the terminal summary."""
    return request.config.stash.setdefault(FIGURES, {})


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    measured = config.stash.get(FIGURES, {})
    if measured:
        terminalreporter.section(f"{OPEN_WEBUI} through the gateway")
        for name, value in measured.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def installed(figures: dict[str, str]) -> Installed:
    done = install()
    figures["install"] = (
        f"{done.seconds:.0f} s" if done.seconds else f"already installed in {done.root}"
    )
    return done


@pytest.fixture(scope="session")
def compat_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProcess]:
    with run_mock(tmp_path_factory.mktemp("compat-mock"), *MOCK_ARGS) as mock:
        yield mock


@dataclass
class Stack:
    """The gateway (and its database) that Open WebUI talks to."""

    gateway: GatewayProcess
    mock: MockProcess
    engine: AsyncEngine

    @property
    def url(self) -> str:
        return self.gateway.url

    async def key(self, *, limits: Limits | None = None, **budgets: int) -> str:
        tenant = unique("webui")
        await admin.create_tenant(
            self.engine, tenant, allowed_models=["llama3.2", "all-minilm"], limits=Limits()
        )
        made = await admin.create_key(
            self.engine, tenant, "open-webui", limits=limits or Limits(), hasher=HASHER
        )
        if budgets:
            await admin.set_budget(self.engine, made.key[:12], **budgets)
        return made.key

    def calls(self, key: str, after: int = 0) -> list[dict[str, Any]]:
        """The gateway's request log lines for ``key``, from line ``after`` on."""
        lines = self.gateway.output().splitlines()[after:]
        records = [json.loads(line) for line in lines if line.startswith('{"request_id"')]
        return [r for r in records if r.get("key_prefix") == key[:12]]

    def mark(self) -> int:
        return len(self.gateway.output().splitlines())

    async def settled_calls(
        self, key: str, after: int, quiet_s: float = 1.5
    ) -> list[dict[str, Any]]:
        """The calls once no new one has been logged for ``quiet_s`` (background tasks
        such as the title finish after the answer)."""
        seen, since = -1, time.monotonic()
        async with asyncio.timeout(60):
            while True:
                calls = self.calls(key, after)
                if len(calls) != seen:
                    seen, since = len(calls), time.monotonic()
                elif time.monotonic() - since >= quiet_s:
                    return calls
                await asyncio.sleep(0.1)

    def mock_bodies(self, path: str, after: int) -> list[dict[str, Any]]:
        """The bodies the backend received on ``path`` after sequence ``after``."""
        answer = httpx.get(self.mock.url + "/_mock/requests", params={"after": after}).json()
        return [
            json.loads(base64.b64decode(r["body"]))
            for r in answer["requests"]
            if r["path"] == path and r["body"]
        ]

    def mock_seq(self) -> int:
        answer = httpx.get(self.mock.url + "/_mock/requests").json()
        return max((r["seq"] for r in answer["requests"]), default=0)


@pytest.fixture(scope="session")
async def stack(
    compat_mock: MockProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("compat-gateway")
    database_url = f"sqlite+aiosqlite:///{workdir / 'gateway.db'}"
    await asyncio.to_thread(upgrade, database_url)
    env = {
        "DATABASE_URL": database_url,
        "OLLAMA_BASE_URL": compat_mock.url,
        "MODEL_DISCOVERY_REFRESH_S": "1",
        "MODEL_DISCOVERY_CACHE_TTL_S": "30",
    }
    engine = create_engine(database_url)
    try:
        with running_gateway(workdir, env) as gateway:
            yield Stack(gateway, compat_mock, engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def open_webui(
    installed: Installed,
    stack: Stack,
    tmp_path_factory: pytest.TempPathFactory,
    figures: dict[str, str],
) -> Iterator[OpenWebUIProcess]:
    with running_open_webui(installed, tmp_path_factory.mktemp("open-webui"), stack.url) as ui:
        figures["start-up"] = f"{ui.started_in_s:.0f} s"
        yield ui


@pytest.fixture(scope="session")
async def admin_ui(open_webui: OpenWebUIProcess) -> AsyncIterator[WebUI]:
    """The first account: signing up on a fresh install makes it the admin."""
    ui = await WebUI.sign_up(open_webui.url, **ADMIN)
    try:
        yield ui
    finally:
        await ui.close()
