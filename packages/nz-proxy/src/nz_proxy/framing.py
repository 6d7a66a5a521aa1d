"""Byte-level stream framing: NDJSON lines in, SSE events out (and back in, for tests).

Pure and incremental: every class here is fed ``bytes`` chunks exactly as the network
delivered them (split anywhere, even inside a UTF-8 character or a ``\\r\\n``) and hands
back complete units. Nothing does I/O. Work is linear in the bytes fed: a buffer is only
ever searched in the part that is new, never rescanned from its start.

``NdjsonSplitter``
    Ollama's streams (``application/x-ndjson``): complete lines, terminator removed,
    blank lines skipped (a blank line would crash ollama-python, WIRE.md §1.1).
``sse_event`` / ``sse_json`` / ``SSE_DONE``
    OpenAI's ``text/event-stream`` framing: ``data: <json>\\n\\n`` and ``data: [DONE]\\n\\n``.
``SseParser``
    The reading side of SSE, following the WHATWG rules the ``openai`` SDK implements.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

__all__ = [
    "SSE_DONE",
    "LineTooLong",
    "NdjsonSplitter",
    "SseParser",
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


_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SseParser:
    """Incremental ``text/event-stream`` reader yielding each event's ``data``.

    The WHATWG rules, as the ``openai`` SDK applies them: lines end in CRLF, LF or CR
    (a CRLF split across two chunks is still one line end); a line starting with ``:``
    is a comment; ``field: value`` loses one leading space of the value; several
    ``data`` lines are joined with ``\\n``; a blank line dispatches the event, but only
    if some ``data`` line was seen; a leading BOM is dropped. An event not closed by a
    blank line when the stream ends is discarded, as the spec requires. Of the other
    fields only ``event`` is kept (``last_event``, the type of the last dispatched
    event); our streams never use ``id`` or ``retry``.
    """

    __slots__ = ("_buf", "_data", "_event", "_skip_lf", "_started", "last_event")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip_lf = False
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self.last_event = ""

    def feed(self, chunk: bytes) -> list[str]:
        """Add ``chunk``; return the data of every event it completed, in order."""
        if not self._started:
            # A BOM may itself arrive split: hold back up to three bytes to decide.
            self._buf += chunk
            if len(self._buf) < len(_BOM) and _BOM.startswith(self._buf):
                return []
            chunk = bytes(self._buf)
            self._buf.clear()
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if not chunk:
            return []
        out: list[str] = []
        start = 0
        if self._skip_lf:
            # The previous chunk ended in CR: an LF here completes that CRLF.
            self._skip_lf = False
            if chunk[0] == 0x0A:
                start = 1
        for match in _LINE_END.finditer(chunk, start):
            end = match.start()
            if self._buf:
                self._buf += memoryview(chunk)[start:end]
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = chunk[start:end]
            self._line(line, out)
            start = match.end()
        if start == len(chunk):
            self._skip_lf = chunk[-1] == 0x0D
        else:
            self._buf += memoryview(chunk)[start:]
        return out

    def _line(self, raw: bytes, out: list[str]) -> None:
        line = raw.decode("utf-8", "replace")
        if not line:
            if self._data:
                out.append("\n".join(self._data))
                self.last_event = self._event or "message"
            self._data = []
            self._event = ""
            return
        if line[0] == ":":
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
