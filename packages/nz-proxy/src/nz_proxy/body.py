"""Reading request bodies: capped while reading, decompressed when sent with a
``Content-Encoding`` (:mod:`nz_proxy.decompression`, capped as well), parsed as JSON
whatever the Content-Type (``curl -d`` sends a form type, and Ollama accepts it;
SPEC §6.4)."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any, Final, TypeVar

import anyio

from nz_proxy.decompression import Decoder, requested_coding
from nz_proxy.errors import BodyTimeout, InvalidRequest, RequestTooLarge
from nz_proxy.types import Receive

__all__ = [
    "BODY_DEADLINE_S",
    "ClientGone",
    "decode_object",
    "header_fields",
    "parse_json_object",
    "read_body",
]

# 16 MiB (the default cap) in this time needs about 2.3 Mbit/s; chat bodies are far
# smaller.
BODY_DEADLINE_S: Final = 60.0
# Reading 16 MiB of small JSON objects takes about a second of CPU: bodies above this
# size are read in a worker thread, one at a time, so the event loop keeps serving.
OFF_LOOP_BYTES: Final = 1 << 20
# Compressed bodies above this size are decoded in that thread from the start: the
# worst 16 KiB (empty zstd blocks, each walked in Python) takes about 4 ms.
ON_LOOP_COMPRESSED_BYTES: Final = 16 << 10

T = TypeVar("T")


def _number(text: str) -> int | float:
    # `12.0` is the integer 12, as JSON Schema (and so /openapi.json) reads it; Ollama's
    # Go decoder refuses it for an int field, so it is forwarded as `12`.
    value = float(text)
    if not math.isfinite(value):
        raise _OutOfRange
    return int(value) if value.is_integer() else value


def _constant(_name: str) -> Any:
    raise _OutOfRange  # NaN and Infinity are not JSON, whatever Python's parser says


class _OutOfRange(ValueError):
    pass


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return obj


# The stdlib parser, not msgspec: only it shows an object's keys before they are merged,
# and a key sent twice must be refused, not silently read as its last value (SPEC §4.9).
_decode = json.JSONDecoder(
    object_pairs_hook=_object, parse_float=_number, parse_constant=_constant
).decode

# Lone surrogates can only come from `\uD800`-`\uDFFF` escapes (UTF-8 cannot carry them).
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _replace_lone_surrogates(value: Any) -> Any:
    """Go's decoder reads an unpaired surrogate escape as U+FFFD; so does the gateway,
    which then forwards exactly that (a lone surrogate cannot even be encoded)."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _replace_lone_surrogates(key): _replace_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


def header_fields(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The request's header fields by name. A field sent on several lines is one
    comma-separated list (RFC 9110 §5.3): ``Content-Encoding: gzip`` and
    ``Content-Encoding: br`` is a body encoded twice, not once with br."""
    fields: dict[bytes, bytes] = {}
    for name, value in raw:
        fields[name] = fields[name] + b", " + value if name in fields else value
    return fields


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole request body, decompressed, refusing more than ``limit`` bytes (sent
    or decoded) as soon as it is known.

    Raises:
        RequestTooLarge: over ``limit``.
        UnsupportedEncoding: a ``Content-Encoding`` other than gzip, deflate, br, zstd.
        InvalidRequest: compressed data that is not valid for its coding.
    """
    coding = requested_coding(headers.get(b"content-encoding"))
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
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if coding is None or not raw:
        return raw
    return await _decompressed(Decoder(coding, raw, limit))


async def _decompressed(decoder: Decoder) -> bytes:
    # A small body's first mebibyte is decoded on the loop (a few ms at most); the
    # rest, and any big compressed body, in the thread big bodies are parsed in:
    # 16 MiB inflates in about 70 ms of CPU, and 16 MiB of empty deflate blocks takes
    # time without any output, neither of which a stream should wait for.
    if len(decoder.data) <= ON_LOOP_COMPRESSED_BYTES:
        decoder.run(until=OFF_LOOP_BYTES)
    if not decoder.finished:
        await anyio.to_thread.run_sync(decoder.run, limiter=_big_bodies())
    return decoder.result()


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object, or a clear 400.

    Read as Go reads it where that matters: strictly UTF-8, one value (nothing after
    it), an unpaired surrogate escape as U+FFFD. A key sent twice in one object is a
    400 naming it (Go would read the last; the client may have meant the first).
    """
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid UTF-8.") from None
    try:
        value = _decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc.msg} (at character {exc.pos})."
        ) from None
    except _Duplicate as exc:
        key = _LONE_SURROGATE.sub("\ufffd", exc.key[:100])  # the error is encoded to JSON
        raise InvalidRequest(
            f"The key '{key}' appears more than once in one object; send each field once.",
            param=key,
        ) from None
    except ValueError:  # out of range: inf, NaN, or more digits than Python converts
        raise InvalidRequest("A number in the request body is out of range.") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if _SURROGATE_ESCAPE.search(raw):
        cleaned: dict[str, Any] = _replace_lone_surrogates(value)
        return cleaned
    return value


@cache
def _big_bodies() -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(1)


async def decode_object(raw: bytes, read: Callable[[dict[str, Any]], T]) -> T:
    """``read(parse_json_object(raw))``, in a worker thread when ``raw`` is big."""
    if len(raw) <= OFF_LOOP_BYTES:
        return read(parse_json_object(raw))
    return await anyio.to_thread.run_sync(
        lambda: read(parse_json_object(raw)), limiter=_big_bodies()
    )
