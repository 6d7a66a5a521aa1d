"""The prompt log (SPEC §10): for keys that opted in, the request body and the text of
the answer, kept for the key's retention (or ``PROMPT_LOG_DEFAULT_RETENTION_DAYS``).
Nothing here runs for a key that did not opt in."""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["Transcript"]

# A prompt log is for review, not archiving: very long answers are cut.
MAX_TEXT_CHARS: Final = 1_000_000


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
        return "".join(self._parts)[:MAX_TEXT_CHARS]
