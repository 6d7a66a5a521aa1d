"""Budget periods, the binding period and reservation arithmetic (SPEC §4.4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nz_core.budgets import (
    BUDGET_MAX,
    TOTAL_START,
    Budgets,
    Period,
    PeriodCalendar,
    PeriodState,
    binding_period,
    blocking_period,
    estimate_prompt_tokens,
    period_bounds,
    seconds_until_reset,
)
from nz_core.errors import InvalidValue
from nz_core.limiter import Ask, BlockedBy, plan_reservation
from nz_core.limits import Limits
from tests.strategies import aware_datetimes, period_states, zones

ORDER = {Period.DAY: 0, Period.MONTH: 1, Period.TOTAL: 2}


@given(aware_datetimes(), zones())
def test_day_bounds(now: datetime, tz: ZoneInfo) -> None:
    start, end = period_bounds(Period.DAY, now, tz)
    assert end is not None
    assert start <= now < end
    assert start.tzinfo is UTC
    assert end.tzinfo is UTC
    assert timedelta(hours=22) <= end - start <= timedelta(hours=26)
    assert start.astimezone(tz).date() == now.astimezone(tz).date()


@given(aware_datetimes(), zones())
def test_month_bounds(now: datetime, tz: ZoneInfo) -> None:
    start, end = period_bounds(Period.MONTH, now, tz)
    assert end is not None
    assert start <= now < end
    local_start = start.astimezone(tz)
    local_now = now.astimezone(tz)
    assert (local_start.year, local_start.month, local_start.day) == (
        local_now.year,
        local_now.month,
        1,
    )
    assert end.astimezone(tz).day == 1
    assert timedelta(days=27) < end - start < timedelta(days=32)


@given(aware_datetimes(), zones())
def test_total_never_resets(now: datetime, tz: ZoneInfo) -> None:
    assert period_bounds(Period.TOTAL, now, tz) == (TOTAL_START, None)
    assert seconds_until_reset(Period.TOTAL, now, tz) is None


@given(st.lists(aware_datetimes(), min_size=1, max_size=20), zones())
def test_the_calendar_remembers_nothing_stale(moments: list[datetime], tz: ZoneInfo) -> None:
    """Asked in any order, across period ends, it answers as ``period_bounds`` does."""
    calendar = PeriodCalendar(tz)
    for now in moments:
        for neighbour in (now, now + timedelta(hours=23), now + timedelta(days=31)):
            for period in Period:
                assert calendar.bounds(period, neighbour) == period_bounds(period, neighbour, tz)


@given(aware_datetimes(), zones(), st.sampled_from([Period.DAY, Period.MONTH]))
def test_reset_is_the_next_period_start(now: datetime, tz: ZoneInfo, period: Period) -> None:
    wait = seconds_until_reset(period, now, tz)
    assert wait is not None
    assert wait > 0
    later = now + timedelta(seconds=wait)
    assert period_bounds(period, later, tz)[0] == later


def test_berlin_day_starts_at_local_midnight() -> None:
    now = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)  # the day clocks go forward
    start, end = period_bounds(Period.DAY, now, ZoneInfo("Europe/Berlin"))
    assert start == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    assert end == datetime(2026, 3, 29, 22, 0, tzinfo=UTC)  # a 23-hour day


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        period_bounds(Period.DAY, datetime(2026, 1, 1), ZoneInfo("UTC"))  # noqa: DTZ001


@given(st.lists(period_states(), min_size=1, max_size=3, unique_by=lambda s: s.period))
def test_binding_period_has_fewest_remaining_ties_to_latest_reset(
    states: list[PeriodState],
) -> None:
    chosen = binding_period(states)
    assert chosen is not None
    assert chosen.remaining == min(s.remaining for s in states)
    tied = [s for s in states if s.remaining == chosen.remaining]
    assert ORDER[chosen.period] == max(ORDER[s.period] for s in tied)


def test_no_budget_no_binding_period() -> None:
    assert binding_period([]) is None


@given(
    st.lists(period_states(), min_size=1, max_size=3, unique_by=lambda s: s.period),
    st.integers(min_value=0, max_value=10**7),
)
def test_blocking_period(states: list[PeriodState], needed: int) -> None:
    blocker = blocking_period(states, needed)
    short = [s for s in states if s.remaining < needed]
    if not short:
        assert blocker is None
    else:
        assert blocker is not None
        assert blocker.remaining < needed
        assert ORDER[blocker.period] == max(ORDER[s.period] for s in short)


@given(
    prompt=st.integers(min_value=1, max_value=100_000),
    requested=st.none() | st.integers(min_value=-2, max_value=100_000),
    default=st.integers(min_value=1, max_value=100_000),
    remaining=st.none() | st.integers(min_value=0, max_value=200_000),
)
def test_reservation_never_exceeds_what_is_left(
    prompt: int, requested: int | None, default: int, remaining: int | None
) -> None:
    ask = Ask("r", True, Limits(), (), prompt, requested, default)
    states = () if remaining is None else (PeriodState(Period.DAY, remaining, 0),)
    plan = plan_reservation(ask, states)
    explicit = requested if requested is not None and requested >= 1 else None
    if isinstance(plan, BlockedBy):
        assert remaining is not None
        assert plan.period is Period.DAY
        if explicit is not None:
            assert prompt + explicit > remaining
        else:
            assert remaining - prompt < 1
        return
    cap, reserved = plan
    assert cap is not None
    assert cap >= 1
    assert reserved == prompt + cap
    if explicit is not None:
        assert cap == explicit  # the client's cap is honoured as given
    else:
        assert cap <= default
    if remaining is not None:
        assert reserved <= remaining
        if explicit is None:  # the default is clipped to exactly what is left, no less
            assert cap == min(default, remaining - prompt)


@given(
    prompt=st.integers(min_value=0, max_value=100_000),
    remaining=st.none() | st.integers(min_value=0, max_value=200_000),
)
def test_an_embedding_reserves_its_prompt_alone(prompt: int, remaining: int | None) -> None:
    ask = Ask("r", True, Limits(), (), prompt, 50, 4096, generates=False)
    states = () if remaining is None else (PeriodState(Period.TOTAL, remaining, 0),)
    plan = plan_reservation(ask, states)
    if remaining is not None and prompt > remaining:
        assert plan == BlockedBy(Period.TOTAL)
    else:
        assert plan == (None, prompt)


@given(
    st.integers(min_value=0, max_value=10**7),
    st.integers(0, 50),
    st.integers(0, 4),
    st.integers(0, 100_000),
    st.integers(0, 2000),
)
def test_prompt_estimate_is_conservative(
    text_bytes: int, messages: int, images: int, context: int, image_tokens: int
) -> None:
    estimate = estimate_prompt_tokens(
        text_bytes, messages, images, context, image_tokens=image_tokens
    )
    # English averages ~4 bytes per token: the estimate stays above that; context ids
    # and images are counted whole.
    assert estimate >= text_bytes / 4 + context + images * image_tokens
    more = {"image_tokens": image_tokens}
    assert estimate_prompt_tokens(text_bytes + 1, messages, images, context, **more) >= estimate
    assert estimate_prompt_tokens(text_bytes, messages + 1, images, context, **more) > estimate
    assert estimate_prompt_tokens(text_bytes, messages, images, context + 1, **more) == (
        estimate + 1
    )


@given(st.integers(), st.integers(), st.integers())
def test_budget_values(daily: int, monthly: int, total: int) -> None:
    assume(min(daily, monthly, total) < 0)
    with pytest.raises(InvalidValue):
        Budgets(daily, monthly, total)


def test_budgets_stay_exact_in_lua_doubles() -> None:
    assert Budgets(daily=BUDGET_MAX).daily == 2**53 - 1
    with pytest.raises(InvalidValue, match="at most"):
        Budgets(total=BUDGET_MAX + 1)


def test_configured_periods() -> None:
    assert Budgets(daily=10, total=0).limits() == {Period.DAY: 10, Period.TOTAL: 0}
    assert not Budgets().configured
