"""Open WebUI's websocket, held as its browser tab holds it.

The browser names its Socket.IO session in every message it sends (``session_id``);
only then does Open WebUI answer as it answers people: built-in tools offered to the
model, the answer run as a background task and streamed back as ``events`` on the
socket, the title, tags and follow-ups generated beside it. This is the smallest
Socket.IO client that does that (Engine.IO 4 over a websocket: open, connect with the
token, answer pings, collect events), on aiohttp, which the workspace already has.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

Event = dict[str, Any]


class BrowserSession:
    """A signed-in tab: ``sid`` to name in messages, ``events`` as they arrive."""

    def __init__(self, base_url: str, token: str) -> None:
        self.url = base_url.replace("http", "ws", 1) + "/ws/socket.io/?EIO=4&transport=websocket"
        self.token = token
        self.sid = ""
        self.events: list[Event] = []
        self._arrived = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BrowserSession:
        self._http = aiohttp.ClientSession()
        self._socket = await self._http.ws_connect(self.url)
        opened = await self._socket.receive_str(timeout=10)
        assert opened.startswith("0"), opened  # Engine.IO open
        await self._socket.send_str("40" + json.dumps({"token": self.token}))
        while True:  # Socket.IO connect, answered with the session id
            packet = await self._socket.receive_str(timeout=10)
            if packet.startswith("40"):
                self.sid = json.loads(packet[2:])["sid"]
                break
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._socket is not None:
            await self._socket.close()
        if self._http is not None:
            await self._http.close()

    async def _read(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            packet = message.data
            if packet == "2":  # ping
                await self._socket.send_str("3")
            elif isinstance(packet, str) and packet.startswith("42"):
                name, *args = json.loads(packet[2:])
                if name == "events" and args:
                    self.events.append(args[0])
                    self._arrived.set()

    def of(self, chat_id: str, kind: str) -> list[Any]:
        """The data of the events of one kind (``chat:title``…) for one chat."""
        return [
            e["data"].get("data")
            for e in self.events
            if e.get("chat_id") == chat_id and e["data"].get("type") == kind
        ]

    async def wait_for(self, found: Callable[[], bool]) -> None:
        """Until ``found()`` holds (callers bound the wait)."""
        while not found():
            self._arrived.clear()
            await self._arrived.wait()
