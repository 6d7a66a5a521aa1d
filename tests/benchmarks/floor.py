"""The floor rig: Granian, a bare ASGI function and aiohttp, with no checks at all.

It reads the request body, sends it to ``FLOOR_UPSTREAM`` + the same path with the
gateway's upstream client (one pooled aiohttp session), and streams the answer back.
No auth, no limits, no accounting, no logging: the best any Python gateway on this
stack can do, so the gateway's throughput is reported as a share of it.

Served as ``granian --interface asgi tests.benchmarks.floor:app``.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

_UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:11434").rstrip("/")
_JSON = {"Content-Type": "application/json"}
_session: aiohttp.ClientSession | None = None


def _client() -> aiohttp.ClientSession:
    # Created on first use, inside the worker's running loop.
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
    return _session


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _session is not None:
                    await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    async with _client().request(
        scope["method"], _UPSTREAM + scope["path"], data=body or None, headers=_JSON
    ) as response:
        headers = [(b"content-type", response.headers.get("Content-Type", "").encode())]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
