"""Rate and concurrency limits, and their key → tenant inheritance (SPEC §4.4).

Each of ``rpm``, ``tpm`` and ``concurrent`` is a positive integer or ``None``. A key's
``None`` means "inherit the tenant's value"; ``None`` on both means unlimited.
"""

from __future__ import annotations

from dataclasses import dataclass

from nz_core.errors import InvalidValue

__all__ = ["LIMIT_MAX", "LIMIT_NAMES", "Limits", "effective_limits", "validate_limit"]

LIMIT_NAMES = ("rpm", "tpm", "concurrent")
#: The largest limit: the columns are 32-bit integers in both databases.
LIMIT_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Requests per minute, tokens per minute and requests in flight; ``None`` = unset."""

    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None

    def __post_init__(self) -> None:
        for name in LIMIT_NAMES:
            validate_limit(name, getattr(self, name))

    @property
    def unlimited(self) -> bool:
        """True when no limit is set at all."""
        return self.rpm is None and self.tpm is None and self.concurrent is None


def validate_limit(name: str, value: object) -> None:
    """Raise :class:`InvalidValue` unless ``value`` is ``None`` or an integer from 1 to
    :data:`LIMIT_MAX`."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"{name} must be an integer or none, got {value!r}")
    if value < 1:
        raise InvalidValue(f"{name} must be at least 1, or none for no limit (got {value})")
    if value > LIMIT_MAX:
        raise InvalidValue(f"{name} must be at most {LIMIT_MAX}, or none for no limit")


def effective_limits(key: Limits, tenant: Limits) -> Limits:
    """The limits that apply to a key: its own values, else its tenant's."""
    return Limits(
        rpm=key.rpm if key.rpm is not None else tenant.rpm,
        tpm=key.tpm if key.tpm is not None else tenant.tpm,
        concurrent=key.concurrent if key.concurrent is not None else tenant.concurrent,
    )
