"""The programmatic API (`MockServer`, `serve`, `create_app`) used in-process."""

from __future__ import annotations

import asyncio

import httpx
import ollama
from aiohttp import web

from nz_mock_ollama import MockConfig, MockServer, create_app, serve
from nz_mock_ollama.state import STATE

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


async def test_mock_server_with_the_async_ollama_client() -> None:
    async with (
        MockServer(MockConfig(token_rate=0, response_tokens=6)) as server,
        ollama.AsyncClient(host=server.url) as client,
    ):
        assert server.port > 0
        parts = [part async for part in await client.chat(**CHAT, stream=True)]
        assert len(parts) == 7
        assert parts[-1].eval_count == 6
        assert server.state.stats.requests == {"/api/chat": 1}


async def test_serve_runs_until_cancelled() -> None:
    ready: asyncio.Queue[MockServer] = asyncio.Queue()
    task = asyncio.create_task(serve(MockConfig(token_rate=0), port=0, ready=ready.put_nowait))
    server = await asyncio.wait_for(ready.get(), 5)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/")).text == "Ollama is running"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await client.get("/")
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError("the mock still answers after serve() was cancelled")


async def test_disconnect_noticed_without_handler_cancellation() -> None:
    # Under a plain AppRunner handlers are not cancelled when the client leaves: the writer
    # must notice by itself (closed transport or failed write) within a frame interval.
    app = create_app(MockConfig(token_rate=50, response_tokens=200))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/chat"
        async with httpx.AsyncClient() as client, client.stream("POST", url, json=CHAT) as reply:
            lines = reply.aiter_lines()
            await anext(lines)
            await anext(lines)
        stats = app[STATE].stats
        for _ in range(100):
            if stats.disconnects:
                break
            await asyncio.sleep(0.01)
        (event,) = stats.disconnects
        assert event.noticed_by in {"transport", "write"}
        assert event.frames_sent <= 4
        assert stats.open_streams == 0
        sent = stats.frames_sent
        await asyncio.sleep(0.1)
        assert stats.frames_sent == sent
    finally:
        await runner.cleanup()
