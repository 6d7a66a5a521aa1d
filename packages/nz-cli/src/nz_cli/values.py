"""Parsing option values that the shell hands over as text."""

from __future__ import annotations

from nz_core.admin import UNSET, Change
from nz_core.errors import InvalidValue

__all__ = ["parse_change", "parse_count"]


def parse_change(option: str, text: str | None, *, minimum: int) -> Change:
    """``None`` (option absent) → UNSET; ``"none"`` → None (clear); else an integer
    ≥ ``minimum``."""
    if text is None:
        return UNSET
    if text.strip().lower() == "none":
        return None
    return parse_count(option, text, minimum=minimum)


def parse_count(option: str, text: str, *, minimum: int) -> int:
    """A whole number ≥ ``minimum``, or :class:`InvalidValue` naming the option."""
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in "+-" else stripped
    if not digits.isdigit() or not digits.isascii():
        raise InvalidValue(f"{option} must be a whole number or 'none', got '{text}'")
    value = int(stripped)
    if value < minimum:
        raise InvalidValue(f"{option} must be at least {minimum} or 'none', got {value}")
    return value
