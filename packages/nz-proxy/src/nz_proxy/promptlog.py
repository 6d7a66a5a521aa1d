"""The prompt log (SPEC §10): for keys that opted in, the request body and the text of
the answer, kept for the key's retention (or ``PROMPT_LOG_DEFAULT_RETENTION_DAYS``).
Nothing here runs for a key that did not opt in."""

from __future__ import annotations

import re
from typing import Final

import msgspec

__all__ = ["Transcript", "storable"]

# A prompt log is for review, not archiving: very long answers are cut.
MAX_TEXT_CHARS: Final = 1_000_000

# What no database text column takes: NUL (PostgreSQL refuses it) and lone surrogates
# (not encodable as UTF-8, so neither driver can send them). Unlike an audit field, a
# prompt keeps its other control characters: newlines and tabs are part of it.
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` with what no database can store replaced by U+FFFD (SPEC §3)."""
    if "\x00" not in text and text.isascii():
        return text  # the common case, without a scan by the regex
    return _UNSTORABLE.sub("\ufffd", text)


class _Message(msgspec.Struct):
    content: str | None = None


class _Frame(msgspec.Struct):
    message: _Message | None = None
    response: str | None = None


_decode: Final = msgspec.json.Decoder(_Frame).decode


class Transcript:
    """Collects the answer's text from the backend's native frames or body."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0

    def feed(self, native: bytes) -> None:
        try:
            frame = _decode(native)
        except msgspec.DecodeError:
            return  # embeddings, error lines: no text to keep
        text = frame.response if frame.response is not None else None
        if text is None and frame.message is not None:
            text = frame.message.content
        if text and self._size < MAX_TEXT_CHARS:
            self._parts.append(text)
            self._size += len(text)

    @property
    def text(self) -> str:
        # A backend's answer may carry NUL ("\u0000" in its JSON): it is cleaned here,
        # where it enters, so the prompt log's writer is never refused for it.
        return storable("".join(self._parts)[:MAX_TEXT_CHARS])
