"""JSON text the way Go's `encoding/json` writes it, which is what Ollama clients see.

Compact separators, UTF-8 kept as is (not `\\uXXXX`), and the HTML-safe escapes Go applies
by default to `<`, `>`, `&`, U+2028 and U+2029. Those characters only occur inside JSON
strings, so replacing them in the whole text is safe.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps", "dumps_bytes"]

_ESCAPES = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


def dumps(obj: Any) -> str:
    """Encode `obj` as compact, Go-escaped JSON text."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    # The common case has nothing to escape; skip the translate pass for it.
    if "<" in text or ">" in text or "&" in text or "\u2028" in text or "\u2029" in text:
        return text.translate(_ESCAPES)
    return text


def dumps_bytes(obj: Any) -> bytes:
    """`dumps` encoded as UTF-8."""
    return dumps(obj).encode()
