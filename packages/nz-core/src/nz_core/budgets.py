"""Token budgets: calendar periods, the binding period, the prompt estimate (SPEC §4.4).

A key may have a ``daily``, ``monthly`` and ``total`` budget in any combination. The
periods are calendar periods in a timezone (UTC unless ``BUDGET_TIMEZONE`` says
otherwise); ``total`` never resets. Admission *reserves* an upper bound for a request
(a conservative prompt estimate plus its completion cap) and settlement later replaces
the reservation with the tokens really used, so completions can never take a key past
its budget; only a prompt larger than its estimate can, by at most that difference.

How a reservation is sized from these is :func:`nz_core.limiter.plan_reservation`.
Everything here is arithmetic on values the caller passes in, including ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo

from nz_core.errors import InvalidValue

__all__ = [
    "BUDGET_MAX",
    "DEFAULT_IMAGE_TOKENS",
    "TOTAL_START",
    "Budgets",
    "Period",
    "PeriodCalendar",
    "PeriodState",
    "binding_period",
    "blocking_period",
    "estimate_prompt_tokens",
    "period_bounds",
    "seconds_until_reset",
    "validate_budget",
]


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


# Ties between periods go to the one that resets last: waiting for an earlier reset
# would not help while the later period is just as empty.
_RESET_ORDER: Final = {Period.DAY: 0, Period.MONTH: 1, Period.TOTAL: 2}

# The ledger files every ``total`` budget under this one period start.
TOTAL_START: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: The largest budget: counters live in Redis Lua, whose numbers are doubles, exact
#: only up to 2**53.
BUDGET_MAX: Final = 2**53 - 1


@dataclass(frozen=True, slots=True)
class Budgets:
    """A key's token budgets per period; ``None`` means no budget for that period."""

    daily: int | None = None
    monthly: int | None = None
    total: int | None = None

    def __post_init__(self) -> None:
        for name in ("daily", "monthly", "total"):
            validate_budget(name, getattr(self, name))

    def limits(self) -> dict[Period, int]:
        """The configured periods and their budgets."""
        pairs = ((Period.DAY, self.daily), (Period.MONTH, self.monthly), (Period.TOTAL, self.total))
        return {period: value for period, value in pairs if value is not None}

    @property
    def configured(self) -> bool:
        return bool(self.limits())


def validate_budget(name: str, value: object) -> None:
    """Raise :class:`InvalidValue` unless ``value`` is ``None`` or an integer from 0 to
    :data:`BUDGET_MAX`."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"{name} budget must be an integer or none, got {value!r}")
    if value < 0:
        raise InvalidValue(f"{name} budget must be at least 0, or none (got {value})")
    if value > BUDGET_MAX:
        raise InvalidValue(f"{name} budget must be at most {BUDGET_MAX}, or none")


def period_bounds(period: Period, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime | None]:
    """Start (inclusive) and end (exclusive, ``None`` for ``total``) of the period that
    contains ``now``, as UTC datetimes. ``now`` must be timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if period is Period.TOTAL:
        return TOTAL_START, None
    local = now.astimezone(tz)
    if period is Period.DAY:
        start_date = local.date()
        end_date = start_date + timedelta(days=1)
    else:
        start_date = local.date().replace(day=1)
        end_date = (start_date + timedelta(days=32)).replace(day=1)
    start = datetime(start_date.year, start_date.month, start_date.day, tzinfo=tz)
    end = datetime(end_date.year, end_date.month, end_date.day, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


class PeriodCalendar:
    """:func:`period_bounds` in one timezone, remembered until the period ends.

    The hot path asks for the same bounds on every request, and they change at most
    once a day; a hit is two comparisons instead of timezone arithmetic. Any ``now``
    may be asked, in any order: a miss simply recomputes.
    """

    __slots__ = ("_last", "tz")

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._last: dict[Period, tuple[datetime, datetime | None]] = {}

    def bounds(self, period: Period, now: datetime) -> tuple[datetime, datetime | None]:
        """The same as ``period_bounds(period, now, self.tz)``."""
        hit = self._last.get(period)
        if hit is not None and hit[0] <= now and (hit[1] is None or now < hit[1]):
            return hit
        hit = period_bounds(period, now, self.tz)
        self._last[period] = hit
        return hit


def seconds_until_reset(period: Period, now: datetime, tz: ZoneInfo) -> float | None:
    """Seconds until ``period`` starts afresh; ``None`` for ``total``, which never does."""
    _, end = period_bounds(period, now, tz)
    if end is None:
        return None
    return (end - now).total_seconds()


@dataclass(frozen=True, slots=True)
class PeriodState:
    """One configured period: its budget and the tokens counted against it (settled
    usage plus outstanding reservations)."""

    period: Period
    limit: int
    used: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


def binding_period(states: Iterable[PeriodState]) -> PeriodState | None:
    """The configured period with the fewest tokens remaining (``None`` if none)."""
    return min(
        states,
        key=lambda s: (s.remaining, -_RESET_ORDER[s.period]),
        default=None,
    )


def blocking_period(states: Iterable[PeriodState], needed: int) -> PeriodState | None:
    """Of the periods that cannot hold ``needed`` tokens, the one that resets last
    (its reset is when a retry can succeed); ``None`` if every period can hold it."""
    short = [s for s in states if s.remaining < needed]
    return max(short, key=lambda s: _RESET_ORDER[s.period], default=None)


# A conservative upper estimate of prompt tokens. Tokenisers average about 4 bytes per
# token on English text and code, fewer on other scripts; 3 bytes keeps the estimate
# above the real count for almost all text. Chat templates add a few tokens per
# message and a fixed preamble; vision models spend hundreds of tokens per image
# (``BUDGET_IMAGE_TOKENS``); a ``context`` array is token ids already, one token each.
_BYTES_PER_TOKEN: Final = 3
_TOKENS_PER_MESSAGE: Final = 8
_TOKENS_PER_REQUEST: Final = 32
DEFAULT_IMAGE_TOKENS: Final = 768


def estimate_prompt_tokens(
    text_bytes: int,
    messages: int = 1,
    images: int = 0,
    context_tokens: int = 0,
    *,
    image_tokens: int = DEFAULT_IMAGE_TOKENS,
) -> int:
    """A conservative estimate of the prompt tokens of a request: its text by size,
    a few tokens per message, ``image_tokens`` per image and the ``context`` ids."""
    return (
        -(-text_bytes // _BYTES_PER_TOKEN)
        + _TOKENS_PER_MESSAGE * messages
        + _TOKENS_PER_REQUEST
        + image_tokens * images
        + context_tokens
    )
