"""Deterministic, L2-normalised embedding vectors.

A vector is SHAKE-256 of (model, text) read as signed 16-bit integers, scaled and
normalised: the same input always gives the same vector, different inputs give unrelated
ones. Benchmarks embed the same few texts over and over, so vectors are cached, already
encoded as JSON text.
"""

from __future__ import annotations

import hashlib
import math
import sys
from array import array
from functools import lru_cache

__all__ = ["truncated", "vector", "vector_json"]


@lru_cache(maxsize=4096)
def vector(model: str, text: str, dimensions: int) -> tuple[float, ...]:
    """A unit vector of `dimensions` floats for `text` under `model`."""
    raw = array("h", hashlib.shake_256(f"{model}\x00{text}".encode()).digest(2 * dimensions))
    if sys.byteorder == "big":
        raw.byteswap()  # the bytes are read little-endian so every host gets the same vector
    norm = math.sqrt(math.fsum(v * v for v in raw)) or 1.0
    return tuple(round(v / norm, 7) for v in raw)


def truncated(values: tuple[float, ...], dimensions: int) -> tuple[float, ...]:
    """The first `dimensions` values, normalised again (what `dimensions` asks Ollama for)."""
    head = values[:dimensions]
    norm = math.sqrt(math.fsum(v * v for v in head)) or 1.0
    return tuple(round(v / norm, 7) for v in head)


@lru_cache(maxsize=4096)
def vector_json(model: str, text: str, full_dimensions: int, dimensions: int) -> str:
    """The vector as a JSON array literal, truncated to `dimensions` when that is smaller."""
    values = vector(model, text, full_dimensions)
    if dimensions < full_dimensions:
        values = truncated(values, dimensions)
    return "[" + ",".join(map(repr, values)) + "]"
