"""Reading request bodies: capped while reading, parsed as JSON whatever the
Content-Type (``curl -d`` sends a form type, and Ollama accepts it; SPEC §6.4)."""

from __future__ import annotations

from typing import Any

import msgspec

from nz_proxy.errors import InvalidRequest, RequestTooLarge
from nz_proxy.types import Receive

__all__ = ["ClientGone", "parse_json_object", "read_body"]

_decode = msgspec.json.Decoder().decode


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes as soon as it is known."""
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise RequestTooLarge(limit)
        except ValueError:
            raise InvalidRequest("Content-Length is not a number.") from None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object, or a clear 400."""
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        value = _decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return value
