"""The raw bodies the mock received, for the parser-differential test (SPEC §4.9).

A bounded ring of the last :data:`CAPACITY` Ollama-path requests (never `/_mock/*`):
path, method, size and the body exactly as it arrived. Read through `GET /_mock/requests`
(bodies base64-encoded, so any bytes survive JSON), emptied by `POST /_mock/reset`.

Recording is cheap enough for the benchmarks: the body is the `bytes` aiohttp already
read and caches for the handler (`request.read()` twice reads once), kept by reference;
base64 happens only when a test asks. Bodies no handler reads are not read here either:
unmatched routes (404/405) and blob uploads, which their handler streams, are recorded
with `body: null`. So are bodies over :data:`MAX_KEPT_BYTES` (their size is kept): a
thousand huge bodies must not pin gigabytes.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

__all__ = ["CAPACITY", "MAX_KEPT_BYTES", "Received", "ReceivedLog"]

CAPACITY: Final = 1000
MAX_KEPT_BYTES: Final = 1 << 20

# Handlers that stream their body instead of reading it whole (`request.content`).
_STREAMED_PREFIXES: Final = ("/api/blobs/",)


@dataclass(frozen=True, slots=True)
class Received:
    """One request as it arrived. ``seq`` counts from 1 since startup (never reset, so
    a reader can ask for what came after the last entry it saw)."""

    seq: int
    method: str
    path: str
    size: int | None  # None: not read
    body: bytes | None  # None: not read (no handler reads it whole), or too large to keep

    def as_json(self) -> dict[str, Any]:
        body = None if self.body is None else base64.b64encode(self.body).decode("ascii")
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "size": self.size,
            "body": body,
        }


@dataclass(slots=True)
class ReceivedLog:
    """The ring of the last ``capacity`` requests."""

    capacity: int = CAPACITY
    recorded: int = 0  # requests recorded since startup (the last seq)
    entries: deque[Received] = field(init=False)

    def __post_init__(self) -> None:
        self.entries = deque(maxlen=self.capacity)

    async def record(self, request: web.Request) -> None:
        """Remember ``request`` with its body, read only where its handler reads it."""
        body: bytes | None = None
        size: int | None = None
        if request.match_info.http_exception is None and not request.path.startswith(
            _STREAMED_PREFIXES
        ):
            body = await request.read()  # cached: the handler's read costs nothing more
            size = len(body)
            if size > MAX_KEPT_BYTES:
                body = None
        self.recorded += 1
        self.entries.append(Received(self.recorded, request.method, request.path, size, body))

    def clear(self) -> None:
        """Forget the entries (``seq`` keeps counting)."""
        self.entries.clear()

    def as_json(self, after: int = 0) -> dict[str, Any]:
        """The `/_mock/requests` body: entries with ``seq`` > ``after``, oldest first."""
        return {
            "requests": [entry.as_json() for entry in self.entries if entry.seq > after],
            "recorded": self.recorded,
            "capacity": self.capacity,
        }
