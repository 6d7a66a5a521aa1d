"""A real gateway (embedded storage, playground on) in front of a paced mock Ollama,
and Debian's Chromium driven by Playwright to use the page the way a person would."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Request, sync_playwright

from nz_core import admin
from nz_core.database import create_engine
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.limits import Limits
from tests.processes import GatewayProcess, MockProcess, run_mock, running_gateway

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("NZ_CHROMIUM", "/usr/bin/chromium"))
# Playwright's own browser download does not work here; these flags make Debian's
# Chromium start quietly in a container and never talk to anything but the page.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Limits and a budget high enough never to bite, so the page has X-RateLimit-* and
# X-Budget-* headers to show.
LIMITS = Limits(rpm=600, tpm=1_000_000)
DAILY_BUDGET = 1_000_000


def artifacts_dir() -> Path:
    path = Path(os.environ.get("NZ_ARTIFACTS_DIR") or REPO_ROOT / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class Playground:
    """The gateway serving the page, and a key allowed every model."""

    gateway: GatewayProcess
    mock: MockProcess
    key: str
    database_url: str

    @property
    def origin(self) -> str:
        return self.gateway.url

    @property
    def url(self) -> str:
        return self.gateway.url + "/playground"


@pytest.fixture(scope="module")
def paced_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProcess]:
    """Tokens ~67 ms apart, so the page visibly renders them one after another."""
    with run_mock(
        tmp_path_factory.mktemp("browser-mock"), "--token-rate", "15", "--response-tokens", "30"
    ) as mock:
        yield mock


@pytest.fixture(scope="module")
async def playground_key(sqlite_url: str) -> str:
    engine = create_engine(sqlite_url)
    try:
        tenant = f"playground-{uuid.uuid4().hex[:8]}"
        await admin.create_tenant(engine, tenant, allow_all_models=True, limits=LIMITS)
        created = await admin.create_key(engine, tenant, "k", hasher=KeyHasher(TEST_HASH_PROFILE))
        await admin.set_budget(engine, created.record.prefix, daily=DAILY_BUDGET)
        return created.key
    finally:
        await engine.dispose()


def playground_env(backend_url: str, database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "OLLAMA_BASE_URL": backend_url,
        "MODEL_DISCOVERY_REFRESH_S": "1",
        "MODEL_DISCOVERY_CACHE_TTL_S": "30",
    }


def wait_for_models(url: str, key: str, timeout: float = 15.0) -> None:
    """Until discovery has run once, the effective set is empty and chat gets 403."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        if answer.status_code == 200 and answer.json()["data"]:
            return
        time.sleep(0.1)
    raise RuntimeError("the gateway discovered no model in time")


@pytest.fixture(scope="module")
def playground(
    paced_mock: MockProcess,
    sqlite_url: str,
    playground_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Playground]:
    env = playground_env(paced_mock.url, sqlite_url) | {"PLAYGROUND_ENABLED": "true"}
    with running_gateway(tmp_path_factory.mktemp("browser-gateway"), env) as gateway:
        wait_for_models(gateway.url, playground_key)
        yield Playground(gateway, paced_mock, playground_key, sqlite_url)


@pytest.fixture(scope="module")
def browser(playground: Playground) -> Iterator[Browser]:
    """Chromium, started after every async fixture: Playwright's sync API leaves its own
    event loop marked as running on this thread, so pytest-asyncio could not set up an
    async fixture while the browser is open."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM} (set NZ_CHROMIUM, or deselect with -m 'not browser')"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Traffic:
    """Every request the page made, every console message it logged and every
    uncaught error its script threw."""

    requests: list[Request] = field(default_factory=list)
    console: list[ConsoleMessage] = field(default_factory=list)
    errors: list[Error] = field(default_factory=list)

    def to(self, path: str) -> list[Request]:
        return [r for r in self.requests if urlsplit(r.url).path == path]

    def origins(self) -> set[str]:
        return {origin(r.url) for r in self.requests}

    def csp_violations(self) -> list[str]:
        return [m.text for m in self.console if "Content Security Policy" in m.text]


@pytest.fixture
def traffic() -> Traffic:
    return Traffic()


@pytest.fixture
def page(browser: Browser, playground: Playground, traffic: Traffic) -> Iterator[Page]:
    """A fresh browser context on the playground: no shared storage between tests."""
    context = browser.new_context(viewport={"width": 1440, "height": 1100})
    try:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=playground.origin)
        page = context.new_page()
        # Playwright tags its handlers, so they must be plain functions.
        page.on("request", lambda request: traffic.requests.append(request))
        page.on("console", lambda message: traffic.console.append(message))
        page.on("pageerror", lambda error: traffic.errors.append(error))
        page.goto(playground.url)
        page.wait_for_selector("body[data-ready='true']")
        yield page
        assert traffic.errors == []
    finally:
        context.close()
