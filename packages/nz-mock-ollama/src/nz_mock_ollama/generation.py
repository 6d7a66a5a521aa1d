"""Deterministic fake model output: readable-ish English, one token per streamed frame.

A corpus of sentences is built once from a fixed seed. An answer is a run of corpus tokens
starting at a sentence chosen by a hash of the prompt, so the same request always gets the
same text, and different prompts get different text. Tokens look like a BPE tokenizer's:
a word with its leading space (" gateway"), punctuation on its own (","), and long words
split in two pieces (" streaming" → " stream", "ing").
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

__all__ = ["Corpus", "apply_stop", "default_corpus", "seed_of"]

# fmt: off
_WORDS = (
    "the", "a", "an", "of", "to", "and", "in", "that", "is", "for", "it", "as", "with", "on",
    "this", "by", "be", "are", "from", "at", "or", "we", "can", "model", "token", "stream",
    "answer", "question", "gateway", "request", "server", "client", "network", "memory", "time",
    "light", "river", "mountain", "garden", "window", "morning", "evening", "letter", "story",
    "music", "signal", "pattern", "simple", "quiet", "bright", "careful", "small", "large",
    "quick", "slow", "gentle", "clear", "early", "late", "useful", "often", "always", "never",
    "rarely", "usually", "perhaps", "clearly", "quickly", "slowly", "together", "carefully",
    "write", "read", "build", "carry", "follow", "measure", "notice", "explain", "describe",
    "remember", "consider", "return", "every", "other", "several", "many", "few", "first",
    "next", "last", "whole", "different", "important", "possible", "weather", "language",
    "machine", "engineer", "library", "computer", "distance", "neighbour", "direction",
    "understanding", "information", "experience", "particular", "interesting", "comfortable",
    "temperature", "because", "while", "although", "unless", "before", "after", "during",
    "between", "through", "without", "around",
)
# fmt: on


@dataclass(frozen=True, slots=True)
class Corpus:
    """A long token sequence and the sentence starts in it."""

    tokens: tuple[str, ...]
    starts: tuple[int, ...]

    def answer(self, seed: int, count: int) -> list[str]:
        """`count` tokens starting at the sentence `seed` picks; the first has no leading space."""
        if count <= 0:
            return []
        start = self.starts[seed % len(self.starts)]
        size = len(self.tokens)
        out = [self.tokens[(start + i) % size] for i in range(count)]
        out[0] = out[0].lstrip()
        return out


def _pieces(word: str) -> list[str]:
    if len(word) < 9:
        return [f" {word}"]
    cut = len(word) // 2 + 1
    return [f" {word[:cut]}", word[cut:]]


@cache
def default_corpus(size: int = 4096) -> Corpus:
    """The corpus every mock uses; built once per process."""
    rng = random.Random(1234)  # noqa: S311 - fixed seed for reproducible fake text, not security
    tokens: list[str] = []
    starts: list[int] = []
    while len(tokens) < size:
        starts.append(len(tokens))
        words = rng.choices(_WORDS, k=rng.randint(6, 14))
        words[0] = words[0].capitalize()
        for i, word in enumerate(words):
            tokens.extend(_pieces(word))
            if 2 < i < len(words) - 2 and rng.random() < 0.12:
                tokens.append(",")
        tokens.append(".")
    return Corpus(tokens=tuple(tokens), starts=tuple(starts))


def seed_of(*parts: str) -> int:
    """A stable 64-bit seed from request text (Python's `hash` is salted per process)."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def apply_stop(tokens: Sequence[str], stops: Sequence[str]) -> tuple[list[str], bool]:
    """Cut `tokens` before the first stop sequence, as Ollama does; True if one was found.

    The token that completes the stop sequence is trimmed to the text before it, and dropped
    when nothing is left of it.
    """
    stops = [s for s in stops if s]
    text = "".join(tokens)
    hits = [pos for s in stops if (pos := text.find(s)) != -1]
    if not hits:
        return list(tokens), False
    cut = min(hits)
    kept: list[str] = []
    offset = 0
    for token in tokens:
        end = offset + len(token)
        if end <= cut:
            kept.append(token)
        else:
            if offset < cut:
                kept.append(token[: cut - offset])
            break
        offset = end
    return kept, True
