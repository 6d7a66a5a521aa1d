"""Serving the mock on a real socket, in-process or from the CLI.

The listener is a socket we bind ourselves (port 0 picks a free port, remembered so a
restart reuses it), served through aiohttp's `AppRunner`/`SockSite`. Refusing connections
closes the listener and every idle keep-alive connection, so clients with pooled
connections see the outage too; in-flight responses finish. Handler cancellation is on:
a client that disconnects cancels its handler at once, as Ollama's request context does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from nz_mock_ollama.app import create_app
from nz_mock_ollama.config import MockConfig
from nz_mock_ollama.state import MockState

__all__ = ["MockServer", "serve"]

# Benchmarks open ~1,000 connections at once; the 128 default backlog would drop SYNs.
_BACKLOG = 4096
_RELISTEN_ATTEMPTS = 50


class MockServer:
    """One mock Ollama listening on `host:port`; use `async with` or start()/stop()."""

    def __init__(self, config: MockConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or MockConfig()
        self.state = MockState.from_config(self.config)
        self._host = host
        self._port = port
        self._runner = web.AppRunner(
            create_app(state=self.state),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=1.0,
        )
        self._site: web.SockSite | None = None
        self._refusal: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. `http://127.0.0.1:11434`."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> str:
        """Bind and serve; returns the URL."""
        await self._runner.setup()
        await self._listen()
        self.state.refuse_connections = self.refuse_for
        if self.config.refuse_connections_s:
            await self.refuse_for(self.config.refuse_connections_s)
        return self.url

    async def stop(self) -> None:
        """Stop listening and close every connection (open streams get about 1 s)."""
        if self._refusal is not None:
            self._refusal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refusal
        await self._runner.cleanup()
        self._site = None

    async def __aenter__(self) -> MockServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def refuse_for(self, seconds: float) -> float:
        """Stop accepting connections for `seconds` (ECONNREFUSED); returns the end, epoch s.

        The listener is closed before this returns, so a client told "done" cannot race it.
        A new call replaces a refusal in progress: the window is always the latest one.
        """
        if self._refusal is not None:
            self._refusal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refusal
        if self._site is not None:
            site, self._site = self._site, None
            await site.stop()
            server = self._runner.server
            for connection in server.connections if server is not None else ():
                # Idle keep-alive connections are cut now (a client that reuses one must
                # see the node gone, not wait on a socket nobody reads); busy ones close
                # after their response.
                if getattr(connection, "_request_in_progress", True):
                    connection.close()
                else:
                    connection.force_close()
        self._refusal = asyncio.get_running_loop().create_task(self._listen_after(seconds))
        until = time.time() + seconds
        self.state.refusing_until = until
        return until

    async def _listen_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        for _ in range(_RELISTEN_ATTEMPTS):
            try:
                await self._listen()
            except OSError as exc:  # the port was taken meanwhile; keep trying briefly
                print(f"nz-mock-ollama: cannot listen again yet: {exc}", file=sys.stderr)
                await asyncio.sleep(0.1)
            else:
                break
        self.state.refusing_until = None

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Restarting on the same port right after closing it needs SO_REUSEADDR.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        return sock

    async def _listen(self) -> None:
        site = web.SockSite(self._runner, self._bind(), backlog=_BACKLOG)
        await site.start()
        self._site = site


async def serve(
    config: MockConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 11434,
    *,
    ready: Callable[[MockServer], None] | None = None,
) -> None:
    """Serve until cancelled; `ready` is called once listening (with the real port)."""
    async with MockServer(config, host, port) as server:
        if ready is not None:
            ready(server)
        await asyncio.Event().wait()
