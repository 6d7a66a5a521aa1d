"""Reading request bodies: capped while reading, parsed as JSON whatever the
Content-Type (``curl -d`` sends a form type, and Ollama accepts it; SPEC §6.4)."""

from __future__ import annotations

import asyncio
import math
from typing import Any, Final

import msgspec

from nz_proxy.errors import BodyTimeout, InvalidRequest, RequestTooLarge
from nz_proxy.types import Receive

__all__ = ["BODY_DEADLINE_S", "ClientGone", "parse_json_object", "read_body"]

# 16 MiB (the default cap) in this time needs about 2.3 Mbit/s; chat bodies are far
# smaller.
BODY_DEADLINE_S: Final = 60.0


def _number(text: str) -> int | float:
    # `12.0` is the integer 12, as JSON Schema (and so /openapi.json) reads it; Ollama's
    # Go decoder refuses it for an int field, so it is forwarded as `12`.
    value = float(text)
    if not math.isfinite(value):
        raise msgspec.ValidationError("Number out of range")
    return int(value) if value.is_integer() else value


_decode = msgspec.json.Decoder(float_hook=_number).decode


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes as soon as it is known."""
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            # More digits than any size fits in is a huge number, not a malformed one
            # (int() refuses past 4,300 digits).
            if (declared.isdigit() and len(declared.lstrip(b"0")) > 20) or int(declared) > limit:
                raise RequestTooLarge(limit)
        except ValueError:
            raise InvalidRequest("Content-Length is not a number.") from None
    chunks: list[bytes] = []
    size = 0
    try:
        # One deadline for the whole body: a client trickling a byte at a time must
        # not hold a connection (and the server's slots) for ever.
        async with asyncio.timeout(BODY_DEADLINE_S):
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
    except TimeoutError:
        raise BodyTimeout(BODY_DEADLINE_S) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object, or a clear 400."""
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        value = _decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    except UnicodeDecodeError:  # msgspec checks UTF-8 inside strings only as it decodes
        raise InvalidRequest("The request body is not valid UTF-8.") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return value
