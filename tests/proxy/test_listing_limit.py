"""The listing allowance (``nz_proxy.admission.listing``): the routes that list or
describe models spend a per-key window of their own (``LISTING_RPM``), never the key's
``rpm``, ``tpm`` or ``concurrent``; over it they are a 429 that says when to retry.

The windows run on the in-process store and on the real Redis, with a clock the test
moves, and a property test holds the Lua script to the in-process one (which runs
``nz_core.windows.check_window``). The routes run in process in both storage modes;
in production every replica shares one window per key.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

from nz_core.limits import Limits
from nz_core.windows import REQUEST_WINDOW_MS, WindowCheck
from nz_proxy.admission.listing import (
    ListingLimit,
    ListingWindow,
    MemoryListingWindow,
    RedisListingWindow,
)
from nz_proxy.errors import GatewayUnavailable, LimitExceeded
from tests import services
from tests.inprocess import Answer, FakeBackend, call, chat_frames, gateway, ndjson

# The in-process gateways' Redis database, as in test_lifecycle (one prefix per key).
LISTING_REDIS_DB: Final = services.REDIS_DB + 3
CHAT: Final = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
# Every route that lists or describes models, with its method and body.
LISTINGS: Final[list[tuple[str, str, dict[str, Any] | bytes]]] = [
    ("GET", "/api/tags", b""),
    ("GET", "/api/ps", b""),
    ("GET", "/api/version", b""),
    ("POST", "/api/show", {"model": "llama3.2"}),
    ("GET", "/v1/models", b""),
    ("GET", "/v1/models/llama3.2", b""),
]
START_MS: Final = 1_800_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


def prefix() -> str:
    return "nz_" + uuid.uuid4().hex[:9]


@pytest.fixture(params=["memory", "redis"])
async def window(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ListingWindow, Clock]]:
    clock = Clock()
    if request.param == "memory":
        yield MemoryListingWindow(clock), clock
        return
    client = aioredis.Redis.from_url(services.redis_url(LISTING_REDIS_DB))
    try:
        yield RedisListingWindow(client, clock=clock), clock
    finally:
        await client.aclose()


async def test_a_window_holds_its_limit_for_sixty_seconds(
    window: tuple[ListingWindow, Clock],
) -> None:
    store, clock = window
    key = prefix()
    taken = []
    for step in range(3):
        clock.now = START_MS + 10 * step
        taken.append(await store.take(key, uuid.uuid4().hex, 3))
    assert [(c.allowed, c.used, c.remaining) for c in taken] == [
        (True, 0, 2),
        (True, 1, 1),
        (True, 2, 0),
    ]
    clock.now = START_MS + 30
    refused = await store.take(key, uuid.uuid4().hex, 3)
    # The first call leaves the window 60 s after it was counted; the refused one is not.
    assert refused == WindowCheck(False, 3, 0, REQUEST_WINDOW_MS - 30, REQUEST_WINDOW_MS - 30)
    assert (await store.take(prefix(), uuid.uuid4().hex, 3)).allowed  # another key's own
    clock.now = START_MS + REQUEST_WINDOW_MS - 1
    assert not (await store.take(key, uuid.uuid4().hex, 3)).allowed
    clock.now = START_MS + REQUEST_WINDOW_MS
    again = await store.take(key, uuid.uuid4().hex, 3)
    assert (again.allowed, again.used, again.remaining) == (True, 2, 0)


@given(
    steps=st.lists(
        st.tuples(st.integers(0, 25_000), st.sampled_from(["a", "b"])), min_size=1, max_size=40
    ),
    limit=st.integers(1, 4),
)
def test_the_script_counts_as_the_in_process_window(
    steps: list[tuple[int, str]], limit: int
) -> None:
    """Any sequence of calls on two keys: the Lua script answers what
    ``check_window`` (the in-process window) answers, call for call."""
    loop = asyncio.new_event_loop()
    client = aioredis.Redis.from_url(services.redis_url(LISTING_REDIS_DB))
    clock = Clock()
    memory, shared = MemoryListingWindow(clock), RedisListingWindow(client, clock=clock)
    keys = {"a": prefix(), "b": prefix()}
    try:
        for advance, which in steps:
            clock.now += advance
            rid = uuid.uuid4().hex
            expected = loop.run_until_complete(memory.take(keys[which], rid, limit))
            assert loop.run_until_complete(shared.take(keys[which], rid, limit)) == expected
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


async def test_an_unreachable_redis_fails_closed() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    window = RedisListingWindow(client)
    try:
        with pytest.raises(RedisConnectionError):  # the window only reports it
            await window.take(prefix(), uuid.uuid4().hex, 1)
        with pytest.raises(GatewayUnavailable):  # the limit turns it into a 503
            await ListingLimit(window, rpm=600).admit(prefix(), uuid.uuid4().hex)
    finally:
        await client.aclose()


async def test_a_refusal_names_the_limit_and_the_wait() -> None:
    clock = Clock()
    limit = ListingLimit(MemoryListingWindow(clock), rpm=1)
    await limit.admit("p", "r1")
    clock.now += 47_500
    with pytest.raises(LimitExceeded) as refused:
        await limit.admit("p", "r2")
    assert refused.value.code == "listing_rate_exceeded"
    assert refused.value.status == 429
    assert refused.value.message == (
        "Model listing rate limit reached (1 per minute); retry in 13 s."
    )
    assert refused.value.headers() == {"Retry-After": "13", "retry-after-ms": "12500"}


# -- through the routes, in both storage modes ------------------------------------------


@pytest.fixture(params=["embedded", "production"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings of each storage mode, for :func:`tests.inprocess.gateway`."""
    if request.param == "embedded":
        return {}
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "redis_url": services.redis_url(LISTING_REDIS_DB),
    }


async def ollama(request: web.BaseRequest) -> web.StreamResponse:
    """What the backend answers besides ``/api/tags``."""
    if request.path == "/api/ps":
        return web.json_response({"models": []})
    if request.path == "/api/version":
        return web.json_response({"version": "0.12.0"})
    if request.path == "/api/show":
        return web.json_response({"details": {"family": "llama"}, "model_info": {}})
    if request.path == "/api/chat":
        frames = chat_frames(["Hello", "!"])
        return web.Response(body=ndjson(frames[-1:]), content_type="application/json")
    return web.json_response({"error": "not found"}, status=404)


async def as_key(app: Any, key: str, method: str, path: str, body: Any = b"") -> Answer:
    return await call(app, method, path, headers={"Authorization": f"Bearer {key}"}, body=body)


def seconds_in(message: str) -> int:
    found = re.search(r"; retry in (\d+) s\.$", message)
    assert found, message
    return int(found.group(1))


async def test_listings_spend_their_own_allowance_never_the_keys_rpm(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    """A key with ``rpm=1`` lists models on every route, up to ``LISTING_RPM``, and its
    one message still goes through; then each limit refuses on its own, saying when."""
    async with (
        FakeBackend(ollama) as backend,
        gateway(backend.url, tmp_path, listing_rpm=len(LISTINGS), **storage) as running,
    ):
        key = await running.new_key(limits=Limits(rpm=1, tpm=100_000, concurrent=1), daily=5000)
        for method, path, body in LISTINGS:
            answer = await as_key(running.app, key, method, path, body)
            assert answer.status == 200, (path, answer.body)
            # Not counted against rpm, so no rpm headers; tokens and budget as they stand.
            assert "x-ratelimit-limit-requests" not in answer.headers, path
            assert answer.headers["x-ratelimit-limit-tokens"] == "100000", path
            assert answer.headers["x-budget-tokens-remaining"] == "5000", path
        forwarded = len(backend.paths())

        native = await as_key(running.app, key, "GET", "/api/ps")
        assert native.status == 429
        message = native.json()["error"]
        assert message.startswith(f"Model listing rate limit reached ({len(LISTINGS)} per min")
        assert seconds_in(message) == int(native.headers["retry-after"])
        assert 1 <= int(native.headers["retry-after"]) <= 60
        openai = await as_key(running.app, key, "GET", "/v1/models")
        assert openai.status == 429
        assert openai.json()["error"]["type"] == "rate_limit_exceeded"
        assert openai.json()["error"]["code"] == "listing_rate_exceeded"
        assert len(backend.paths()) == forwarded  # refused before the backend

        chat = await as_key(running.app, key, "POST", "/api/chat", {**CHAT, "stream": False})
        assert chat.status == 200, chat.body  # its rpm was all there
        assert chat.headers["x-ratelimit-remaining-requests"] == "0"
        spent = await as_key(running.app, key, "POST", "/v1/chat/completions", CHAT)
        assert spent.status == 429
        assert spent.json()["error"]["code"] == "rpm_exceeded"
        wait = int(spent.headers["retry-after"])
        assert spent.json()["error"]["message"] == (
            f"Request rate limit reached; retry in {wait} s."
        )


async def test_a_key_whose_rpm_is_spent_still_lists_models(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    """Open WebUI's page load after a message: the listing is not the 429."""
    async with FakeBackend(ollama) as backend, gateway(backend.url, tmp_path, **storage) as running:
        key = await running.new_key(limits=Limits(rpm=1))
        chat = await as_key(running.app, key, "POST", "/api/chat", {**CHAT, "stream": False})
        assert chat.status == 200
        for _ in range(3):
            for path in ("/api/tags", "/api/ps", "/api/version"):
                assert (await as_key(running.app, key, "GET", path)).status == 200, path
        refused = await as_key(running.app, key, "POST", "/api/chat", {**CHAT, "stream": False})
        assert refused.status == 429
        assert seconds_in(refused.json()["error"]) == int(refused.headers["retry-after"])


async def test_each_key_has_its_own_allowance(storage: dict[str, Any], tmp_path: Path) -> None:
    async with (
        FakeBackend(ollama) as backend,
        gateway(backend.url, tmp_path, listing_rpm=2, **storage) as running,
    ):
        first, second = await running.new_key(), await running.new_key()
        statuses = [(await as_key(running.app, first, "GET", "/api/tags")).status for _ in "abc"]
        assert statuses == [200, 200, 429]
        assert (await as_key(running.app, second, "GET", "/api/tags")).status == 200


async def test_replicas_share_one_allowance_per_key(postgres_url: str, tmp_path: Path) -> None:
    """Production: two gateway processes on one Redis count into one window, so
    adding replicas does not multiply the allowance."""
    storage = {"database_url": postgres_url, "redis_url": services.redis_url(LISTING_REDIS_DB)}
    async with (
        FakeBackend(ollama) as backend,
        gateway(backend.url, tmp_path, listing_rpm=4, **storage) as one,
        gateway(backend.url, tmp_path, listing_rpm=4, **storage) as two,
    ):
        key = await one.new_key()
        answers = [
            await as_key(replica.app, key, "GET", "/v1/models")
            for replica in (one, two, one, two, one, two)
        ]
        assert [a.status for a in answers] == [200, 200, 200, 200, 429, 429]
