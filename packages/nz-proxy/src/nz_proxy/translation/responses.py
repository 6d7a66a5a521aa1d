"""Writing responses on the raw ASGI interface: JSON bodies, errors and streams.

Every error body comes from :func:`nz_proxy.errors.render`, so each surface answers in
its own shape (SPEC §6.1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Final

from nz_proxy.errors import GatewayError, InvalidRequest, Surface, render
from nz_proxy.types import Send

__all__ = [
    "MEDIA_JSON",
    "MEDIA_NDJSON",
    "MEDIA_SSE",
    "MEDIA_TEXT",
    "answer_unread_body",
    "send_bytes",
    "send_error",
    "start",
]

MEDIA_JSON: Final = b"application/json"
MEDIA_NDJSON: Final = b"application/x-ndjson"
MEDIA_SSE: Final = b"text/event-stream"
MEDIA_TEXT: Final = b"text/plain; charset=utf-8"

# Streams must reach the client frame by frame, through any proxy in front of us.
_STREAM_HEADERS: Final = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    media_type: bytes = MEDIA_JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    head: bool = False,
) -> None:
    """A complete response in two ASGI messages."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_error(
    send: Send, error: GatewayError, surface: Surface, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    headers += error.extra_headers
    await send_bytes(send, error.status, render(error, surface), headers=[*headers, *extra])


async def answer_unread_body(send: Send, surface: Surface) -> None:
    """The body never arrived whole. Either the client left, or its chunked framing was
    broken, which the server reports as a disconnect too: answer 400 in case someone is
    still listening (a send to a closed connection is dropped)."""
    with contextlib.suppress(Exception):
        await send_error(send, InvalidRequest("The request body could not be read."), surface)


async def start(send: Send, media_type: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Start a 200 stream; the body follows in ``more_body`` messages."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", media_type), *_STREAM_HEADERS, *headers],
        }
    )
