"""One NDJSON response stream: pacing, stream faults, and noticing a client that left.

Every line is one compact JSON object ending in a single `\\n` (never a blank line). Frames
are paced on an absolute schedule (`token_rate`), so a slow event loop does not stretch a
stream. Before each frame the writer checks the transport, and a failed write counts too,
so a client that went away is noticed within one frame interval at the latest; when the
server runs with handler cancellation the handler is cancelled the moment the connection
drops, which `__aexit__` records the same way. After that nothing more is generated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from nz_mock_ollama import gojson
from nz_mock_ollama.state import MockState
from nz_mock_ollama.stats import DisconnectEvent

__all__ = ["ARRIVED", "NDJSON_CONTENT_TYPE", "NdjsonStream", "record_disconnect"]

NDJSON_CONTENT_TYPE = "application/x-ndjson"
# Monotonic arrival time of a request, stored on it by the middleware.
ARRIVED = web.RequestKey("nz_mock_ollama.arrived", float)
_DISCONNECT_RECORDED = web.RequestKey("nz_mock_ollama.disconnect_recorded", bool)


def record_disconnect(
    request: web.Request, state: MockState, frames_sent: int, noticed_by: str
) -> None:
    """Record that the client left (once per request)."""
    if request.get(_DISCONNECT_RECORDED):
        return
    request[_DISCONNECT_RECORDED] = True
    arrived = request.get(ARRIVED, time.monotonic())
    state.stats.disconnects.append(
        DisconnectEvent(
            path=request.path,
            at=time.time(),
            elapsed_s=time.monotonic() - arrived,
            frames_sent=frames_sent,
            noticed_by=noticed_by,
        )
    )


def client_gone(request: web.Request) -> bool:
    """Whether the connection under `request` is closed or closing."""
    transport = request.transport
    return transport is None or transport.is_closing()


class NdjsonStream:
    """Write one streamed answer; use as `async with NdjsonStream(...) as stream`."""

    __slots__ = (
        "_cut_after",
        "_error_after",
        "_error_message",
        "_interval",
        "_loop",
        "_next_at",
        "_request",
        "_state",
        "ended",
        "frames_sent",
        "response",
    )

    def __init__(self, request: web.Request, state: MockState, *, paced: bool = True) -> None:
        self._request = request
        self._state = state
        faults = state.faults
        scoped = faults.applies_to(request.path)
        self._cut_after = faults.cut_stream_after if scoped else None
        self._error_after = faults.error_after if scoped else None
        self._error_message = faults.error_message
        self._interval = state.frame_interval if paced else 0.0
        self._loop = asyncio.get_running_loop()
        self._next_at = 0.0
        self.response = web.StreamResponse(headers={"Content-Type": NDJSON_CONTENT_TYPE})
        self.frames_sent = 0
        # True once the stream stopped early: the client left or a fault ended it.
        self.ended = False

    async def __aenter__(self) -> NdjsonStream:
        await self.response.prepare(self._request)
        stats = self._state.stats
        stats.open_streams += 1
        stats.streams_started += 1
        self._next_at = self._loop.time()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stats = self._state.stats
        stats.open_streams -= 1
        if exc_type is not None:
            if client_gone(self._request):
                record_disconnect(self._request, self._state, self.frames_sent, "cancelled")
            return
        if not self.ended:
            stats.streams_completed += 1

    async def send(self, make: Callable[[], bytes]) -> bool:
        """Wait for the frame's turn, then build and write it; False means stop generating.

        The frame is built only when due, so its `created_at` and durations are those of
        the moment it is written.
        """
        if self.ended:
            return False
        sent = self.frames_sent
        if self._interval and sent:
            self._next_at += self._interval
            delay = self._next_at - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if self._cut_after is not None and sent >= self._cut_after:
            self._cut()
            return False
        if self._error_after is not None and sent >= self._error_after:
            await self._fail()
            return False
        if client_gone(self._request):
            return self._gone("transport")
        try:
            await self.response.write(make())
        except ConnectionError:
            return self._gone("write")
        self.frames_sent = sent + 1
        self._state.stats.frames_sent += 1
        return True

    def _gone(self, noticed_by: str) -> bool:
        self.ended = True
        record_disconnect(self._request, self._state, self.frames_sent, noticed_by)
        return False

    def _cut(self) -> None:
        # Close the socket with the chunked body unfinished: no final frame, no error line.
        # close() (not abort()) so frames already written still reach the client first.
        self.ended = True
        self._state.stats.streams_cut += 1
        transport = self._request.transport
        if transport is not None:
            transport.close()

    async def _fail(self) -> None:
        # Ollama's mid-stream error: status stays 200, one `{"error": …}` line, then the end.
        self.ended = True
        self._state.stats.streams_errored += 1
        line = gojson.dumps_bytes({"error": self._error_message}) + b"\n"
        try:
            await self.response.write(line)
        except ConnectionError:
            record_disconnect(self._request, self._state, self.frames_sent, "write")
