"""`keep_alive` as Ollama reads it: seconds as a number, or a Go duration string."""

from __future__ import annotations

import math
import re

__all__ = ["DEFAULT_KEEP_ALIVE_S", "parse_keep_alive", "session_seconds"]

DEFAULT_KEEP_ALIVE_S = 300.0

# Go takes both micro signs: U+00B5 and the Greek mu, U+03BC.
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def _go_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(body):
        part = _PART.match(body, pos)
        if part is None:
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(part.group(1)) * _UNITS[part.group(2)]
        pos = part.end()
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def parse_keep_alive(value: object) -> float | None:
    """Seconds to keep the model loaded; None means forever (a negative value).

    Absent (None) means the 5 minute default. Raises ValueError with Go's wording when
    the string is not a duration.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, bool):
        raise ValueError("json: cannot unmarshal bool into Go value of type time.Duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)  # Ollama accepts "300" as seconds too
        except ValueError:
            seconds = _go_duration(value)
    else:
        raise ValueError("json: cannot unmarshal object into Go value of type time.Duration")
    if math.isnan(seconds):
        raise ValueError(f'time: invalid duration "{value}"')
    return None if seconds < 0 or math.isinf(seconds) else seconds


def session_seconds(value: object) -> float | None:
    """`keep_alive` as a node applies it to a runner: None when the request sent none
    (Ollama then keeps the runner's own), inf for forever. Raises as `parse_keep_alive`."""
    if value is None:
        return None
    seconds = parse_keep_alive(value)
    return math.inf if seconds is None else seconds
