"""Model residency on a backend (SPEC §4.12): how long a model stays loaded
(``keep_alive``), read exactly as Ollama reads it, and the policy that keeps tenants
from controlling shared GPU memory.

Ollama takes ``keep_alive`` as a number of seconds or a Go duration string
(``time.ParseDuration``: a unit on every number, ``"0"`` the one exception); anything
negative means "keep it loaded forever". :func:`parse_go_duration` is Go's parser, so
the gateway refuses exactly the strings Ollama would refuse, and reads the others as it
does.

The policy: :func:`clamp_keep_alive` bounds a client's ``keep_alive`` (an unload, ``0``,
needs the ``residency`` scope, which also lifts the bounds); :func:`effective_num_ctx`
replaces a client's ``num_ctx`` by the model's pinned one (a :class:`ResidencyPolicy`),
or caps it at the model's context length, so that clients varying it cannot force
reloads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from nz_core.errors import InvalidValue

__all__ = [
    "FOREVER",
    "MAX_NUM_CTX",
    "ResidencyPolicy",
    "check_num_ctx",
    "clamp_keep_alive",
    "effective_num_ctx",
    "keep_alive_seconds",
    "parse_go_duration",
]

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


# -- the policy -----------------------------------------------------------------

#: The column is a 32-bit integer, and Ollama's own context sizes are far below it.
MAX_NUM_CTX: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ResidencyPolicy:
    """A model's residency policy: ``num_ctx`` pinned, or ``None`` (the client's value,
    capped at the model's context length). ``model`` is normalised."""

    model: str
    num_ctx: int | None
    updated_at: datetime | None = None


def check_num_ctx(num_ctx: int) -> int:
    """``num_ctx`` if it is a whole number of tokens from 1 up.

    Raises:
        InvalidValue: it is not.
    """
    if isinstance(num_ctx, bool) or not isinstance(num_ctx, int):
        raise InvalidValue(f"num_ctx must be a whole number of tokens, got {num_ctx!r}")
    if not 1 <= num_ctx <= MAX_NUM_CTX:
        raise InvalidValue(f"num_ctx must be between 1 and {MAX_NUM_CTX} (got {num_ctx})")
    return num_ctx


def clamp_keep_alive(seconds: float, minimum: float, maximum: float) -> float:
    """A client's ``keep_alive`` (seconds, :data:`FOREVER` for a negative value) within
    [``minimum``, ``maximum``]: forever becomes the maximum.

    An unload (``0``) is clamped like any short value; refusing it to keys without the
    ``residency`` scope is the caller's decision, made before (SPEC §4.12).
    """
    return min(max(seconds, minimum), maximum)


def effective_num_ctx(
    requested: int | None, pinned: int | None, context_length: int | None
) -> int | None:
    """The ``num_ctx`` to send: the pinned one whatever the client asked (even nothing,
    since Ollama's default would load the model at another size), else the client's
    value capped at the model's ``context_length`` when that is known."""
    if pinned is not None:
        return pinned
    if requested is None or context_length is None:
        return requested
    return min(requested, context_length)
