"""Model residency on a backend (SPEC §4.12): how long a model stays loaded
(``keep_alive``), read exactly as Ollama reads it.

Ollama takes ``keep_alive`` as a number of seconds or a Go duration string
(``time.ParseDuration``: a unit on every number, ``"0"`` the one exception); anything
negative means "keep it loaded forever". :func:`parse_go_duration` is Go's parser, so
the gateway refuses exactly the strings Ollama would refuse, and reads the others as it
does.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["FOREVER", "keep_alive_seconds", "parse_go_duration"]

#: A keep-alive that never expires (Ollama's reading of any negative value).
FOREVER: Final = math.inf

_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX: Final = 1 << 63
_DIGITS: Final = frozenset("0123456789")


def parse_go_duration(text: str) -> int:
    """Nanoseconds, as Go's ``time.ParseDuration`` reads ``text``.

    Raises:
        ValueError: with Go's own message (``time: missing unit in duration "300"``).
    """
    original = text
    negative = text[:1] == "-"
    if text[:1] in ("-", "+"):
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise ValueError(f'time: invalid duration "{original}"')
    total = 0
    while text:
        nanoseconds, text = _part(text, original)
        total += nanoseconds
        if total > _MAX:
            raise ValueError(f'time: invalid duration "{original}"')
    if negative:
        return -total
    if total > _MAX - 1:
        raise ValueError(f'time: invalid duration "{original}"')
    return total


def _part(text: str, original: str) -> tuple[int, str]:
    """The first ``<number><unit>`` of ``text`` in nanoseconds, and the rest."""
    invalid = ValueError(f'time: invalid duration "{original}"')
    if not (text[0] == "." or text[0] in _DIGITS):
        raise invalid
    whole, text = _leading(text)
    if whole and int(whole) > _MAX:  # more than Go's leadingInt takes
        raise invalid
    digits = ""
    if text[:1] == ".":
        digits, text = _leading(text[1:])
    if not whole and not digits:
        raise invalid
    unit_end = 0
    while unit_end < len(text) and not (text[unit_end] == "." or text[unit_end] in _DIGITS):
        unit_end += 1
    if unit_end == 0:
        raise ValueError(f'time: missing unit in duration "{original}"')
    unit, text = text[:unit_end], text[unit_end:]
    if unit not in _NS:
        raise ValueError(f'time: unknown unit "{unit}" in duration "{original}"')
    value = int(whole or "0") * _NS[unit]
    if value > _MAX:
        raise invalid
    return value + _fraction(digits, _NS[unit]), text


def _fraction(digits: str, unit: int) -> int:
    """Go's leadingFraction: digits past what an int64 scale holds add no precision."""
    fraction, scale = 0, 1
    for digit in digits:
        if scale > _MAX // 10:
            break
        fraction, scale = fraction * 10 + int(digit), scale * 10
    return int(fraction * (unit / scale)) if fraction else 0


def _leading(text: str) -> tuple[str, str]:
    """The leading decimal digits of ``text``, and the rest."""
    end = 0
    while end < len(text) and text[end] in _DIGITS:
        end += 1
    return text[:end], text[end:]


def keep_alive_seconds(value: float | str) -> float:
    """Seconds a ``keep_alive`` value keeps a model loaded, as Ollama reads it:
    :data:`FOREVER` for anything negative.

    Raises:
        ValueError: a string Ollama would refuse.
    """
    if isinstance(value, str):
        nanoseconds = parse_go_duration(value)
        return FOREVER if nanoseconds < 0 else nanoseconds / 1e9
    return FOREVER if value < 0 else float(value)
