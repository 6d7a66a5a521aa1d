"""Token log probabilities, as Ollama returns them when a chat or generate request asks
(`logprobs: true`, `top_logprobs` 0-20; `api/types.go` `Logprob`).

Each content token gets `{"token","logprob","bytes","top_logprobs"}`, the last only
when more than 0 alternatives were asked for. The numbers are made up but stable: a
token always has the same log probability, and its alternatives are the token itself
followed by other words, each less likely than the one before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from nz_mock_ollama.errors import OllamaError
from nz_mock_ollama.generation import default_corpus

__all__ = ["MAX_TOP_LOGPROBS", "requested", "token_logprobs"]

MAX_TOP_LOGPROBS = 20


def requested(body: Mapping[str, Any]) -> int | None:
    """How many alternatives each token should list, or None when logprobs were not
    asked for. Ollama checks the range before anything else, whether or not
    `logprobs` is true."""
    top = body.get("top_logprobs") or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise OllamaError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    return top if body.get("logprobs") is True else None


def _digest(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


@lru_cache(maxsize=16384)
def _alternatives(token: str) -> tuple[str, ...]:
    words = sorted(set(default_corpus().tokens), key=lambda word: _digest(token + word))
    return tuple(word for word in words if word != token)[: MAX_TOP_LOGPROBS - 1]


def token_logprobs(token: str, top: int) -> dict[str, Any]:
    """One token's entry, with ``top`` alternatives (the token itself first)."""
    logprob = -(1 + _digest(token) % 3000) / 1000  # in [-3.0, -0.001]: never -0.0
    entry = _entry(token, logprob)
    if top > 0:
        others = _alternatives(token)[: top - 1]
        entry["top_logprobs"] = [
            _entry(token, logprob),
            *(_entry(word, round(logprob - 0.5 * (i + 1), 3)) for i, word in enumerate(others)),
        ]
    return entry
