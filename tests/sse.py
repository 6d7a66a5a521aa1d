"""The reading side of OpenAI's server-sent events, for tests: what the ``openai`` SDK
does with the gateway's stream, event by event."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["SseParser"]

_LINE_END: Final = re.compile(rb"\r\n|\r|\n")
_BOM: Final = b"\xef\xbb\xbf"


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
