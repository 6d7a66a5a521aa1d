"""Discovery while the backend does not answer (SPEC §4.6, §6.5): the 502 it causes
says when the next poll will have answered (``Retry-After``), never a fixed minute, and
a gateway that started with its backend down looks again within seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from nz_proxy.breaker import CircuitBreaker
from nz_proxy.discovery import SILENT_POLL_S, Discovery, MemoryCatalogueStore
from nz_proxy.errors import UpstreamUnavailable
from nz_proxy.upstream import Upstream
from tests.inprocess import FakeBackend, call, chat_frames, gateway, tags
from tests.processes import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def dead_upstream() -> AsyncIterator[Upstream]:
    upstream = Upstream(
        f"http://127.0.0.1:{free_port()}",
        connect_timeout_s=1,
        read_timeout_s=1,
        breaker=CircuitBreaker(5, 30),
    )
    await upstream.start()
    yield upstream
    await upstream.close()


def refused_wait_ms(discovery: Discovery) -> int:
    with pytest.raises(UpstreamUnavailable) as refused:
        discovery.require()
    assert refused.value.retry_after_ms is not None
    return refused.value.retry_after_ms


async def test_a_silent_backend_is_retried_in_two_seconds_and_says_so(
    dead_upstream: Upstream,
) -> None:
    clock = Clock()
    discovery = Discovery(
        dead_upstream, MemoryCatalogueStore(), refresh_s=60, ttl_s=180, clock=clock
    )
    assert await discovery.step() == SILENT_POLL_S  # not the 60 s refresh interval
    assert refused_wait_ms(discovery) == 2000
    clock.now += 1.5
    assert refused_wait_ms(discovery) == 500
    clock.now += 5  # the poll is overdue (running now): the wait is the poll's own length
    assert refused_wait_ms(discovery) == 1


async def test_the_wait_includes_how_long_a_poll_takes(tmp_path: Path) -> None:
    """A backend that takes 3 s to fail its `/api/tags`: a client told to come back
    when the next poll starts would come back before it has answered."""
    clock = Clock()

    async def slow_failure(request: web.BaseRequest) -> web.StreamResponse:
        clock.now += 3
        return web.Response(status=500, text="busy")

    async with FakeBackend(slow_failure, answers_tags=True) as backend:
        upstream = Upstream(backend.url, connect_timeout_s=1, read_timeout_s=5,
                            breaker=CircuitBreaker(5, 30))  # fmt: skip
        await upstream.start()
        try:
            discovery = Discovery(
                upstream, MemoryCatalogueStore(), refresh_s=60, ttl_s=180, clock=clock
            )
            assert await discovery.refresh() is False
        finally:
            await upstream.close()
    assert refused_wait_ms(discovery) == 5000  # the next poll in 2 s, then its 3 s


async def test_an_answering_backend_is_polled_at_the_refresh_interval() -> None:
    async def models(request: web.BaseRequest) -> web.StreamResponse:
        return tags()

    async with FakeBackend(models) as backend:
        upstream = Upstream(backend.url, connect_timeout_s=1, read_timeout_s=1,
                            breaker=CircuitBreaker(5, 30))  # fmt: skip
        await upstream.start()
        try:
            discovery = Discovery(upstream, MemoryCatalogueStore(), refresh_s=60, ttl_s=180)
            assert await discovery.step() == pytest.approx(60, abs=0.5)
            assert "llama3.2:latest" in discovery.require().names
        finally:
            await upstream.close()


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
async def test_a_gateway_started_before_its_backend_serves_within_seconds(
    tmp_path: Path, path: str
) -> None:
    """Refresh interval a minute, as by default: the first 502 says about 2 s, and the
    backend that comes up is in use about then (before, the next poll came a minute
    after a failed first one, and the 502 said 60 s)."""
    port = free_port()

    async def backend(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/api/tags":
            return tags()
        return web.json_response(chat_frames(["ja"])[-1])

    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with gateway(f"http://127.0.0.1:{port}", tmp_path, model_discovery_refresh_s=60) as gw:
        refused = await call(gw.app, "POST", path, headers=gw.auth, body=body)
        assert refused.status == 502
        wait_ms = int(refused.headers["retry-after-ms"])
        assert 1 <= wait_ms <= 2100
        assert refused.headers["retry-after"] in ("1", "2", "3")
        server = RawTestServer(backend, port=port)
        await server.start_server()
        try:
            started = time.monotonic()
            while (
                answer := await call(gw.app, "POST", path, headers=gw.auth, body=body)
            ).status != 200:
                assert answer.status == 502
                assert time.monotonic() - started < 5, "discovery did not look again in time"
                await asyncio.sleep(0.1)
        finally:
            await server.close()
