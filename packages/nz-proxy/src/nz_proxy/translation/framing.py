"""Byte-level stream framing: NDJSON lines in, SSE events out.

Pure and incremental: every class here is fed ``bytes`` chunks exactly as the network
delivered them (split anywhere, even inside a UTF-8 character or a ``\\r\\n``) and hands
back complete units. Nothing does I/O. Work is linear in the bytes fed: a buffer is only
ever searched in the part that is new, never rescanned from its start.

``NdjsonSplitter``
    Ollama's streams (``application/x-ndjson``): complete lines, terminator removed,
    blank lines skipped (a blank line would crash ollama-python, WIRE.md §1.1).
``sse_event`` / ``sse_json`` / ``SSE_DONE``
    OpenAI's ``text/event-stream`` framing: ``data: <json>\\n\\n`` and ``data: [DONE]\\n\\n``.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

__all__ = [
    "SSE_DONE",
    "LineTooLong",
    "NdjsonSplitter",
    "sse_event",
    "sse_json",
]

SSE_DONE: Final = b"data: [DONE]\n\n"

_DATA: Final = b"data: "
_EVENT_END: Final = b"\n\n"
_encode = msgspec.json.Encoder().encode


class LineTooLong(ValueError):
    """A line grew past the splitter's ``max_line`` without a terminator."""


class NdjsonSplitter:
    """Incremental NDJSON line splitter.

    ``feed`` returns the lines completed by a chunk (without ``\\n`` or ``\\r\\n``);
    empty and whitespace-only lines are dropped. ``flush`` returns the unterminated tail
    once the stream has ended. ``max_line`` (bytes, optional) bounds what an upstream
    can make us buffer; exceeding it raises :class:`LineTooLong`.
    """

    __slots__ = ("_buf", "_max_line")

    def __init__(self, *, max_line: int | None = None) -> None:
        self._buf = bytearray()
        self._max_line = max_line

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete line."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk``; return the complete, non-blank lines it finished, in order."""
        cut = chunk.rfind(b"\n")
        if cut < 0:
            # No terminator: only the new bytes are appended (amortised O(1) per byte).
            self._buf += chunk
            self._check_size()
            return []
        if self._buf:
            self._buf += memoryview(chunk)[:cut]
            parts = bytes(self._buf).split(b"\n")
            self._buf.clear()
        else:
            parts = chunk[:cut].split(b"\n")
        self._buf += memoryview(chunk)[cut + 1 :]
        self._check_size()
        return [line for part in parts if (line := _clean(part))]

    def flush(self) -> bytes | None:
        """The trailing line that never got a ``\\n`` (None if there is none); resets."""
        tail = _clean(bytes(self._buf))
        self._buf.clear()
        return tail or None

    def _check_size(self) -> None:
        # A trailing CR may be half of a CRLF: it does not count until the next byte.
        if (
            self._max_line is not None
            and len(self._buf) - self._buf.endswith(b"\r") > self._max_line
        ):
            size = len(self._buf)
            self._buf.clear()
            raise LineTooLong(f"line exceeds {self._max_line} bytes (buffered {size})")


def _clean(line: bytes) -> bytes:
    """Strip a ``\\r`` left by ``\\r\\n``; blank lines become ``b""``."""
    if line.endswith(b"\r"):
        line = line[:-1]
    # isspace() stops at the first non-space byte, so this is O(1) for real lines.
    if not line or line.isspace():
        return b""
    return line


def sse_event(payload: bytes) -> bytes:
    """One SSE event carrying ``payload`` as its data.

    Compact JSON never contains a raw line break, so the common case is one ``data:``
    line; anything with line breaks is split into several ``data:`` lines, which a
    reader joins back with ``\\n`` (CR and CRLF are normalised to LF, as SSE must).
    """
    if b"\n" not in payload and b"\r" not in payload:
        return _DATA + payload + _EVENT_END
    lines = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"".join([_DATA + line + b"\n" for line in lines]) + b"\n"


def sse_json(obj: Any) -> bytes:
    """``data: <compact JSON of obj>\\n\\n``."""
    return _DATA + _encode(obj) + _EVENT_END
