"""Rate-window arithmetic, checked against brute-force definitions (SPEC §4.4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nz_core.windows import (
    REQUEST_WINDOW_MS,
    TOKEN_BUCKET_MS,
    active_leases,
    check_concurrency,
    check_requests,
    check_tokens,
    token_bucket,
    tokens_in_window,
)

NOW = 10_000_000
times = st.lists(st.integers(min_value=NOW - 200_000, max_value=NOW), max_size=40)
limits = st.integers(min_value=1, max_value=30)


def in_window(admitted: list[int], now: int) -> int:
    return sum(1 for t in admitted if now - REQUEST_WINDOW_MS < t <= now)


@given(times, limits)
def test_request_window_decision(admitted: list[int], limit: int) -> None:
    check = check_requests(admitted, NOW, limit)
    used = in_window(admitted, NOW)
    assert check.used == used
    assert check.allowed == (used < limit)
    if check.allowed:
        assert check.remaining == limit - used - 1
        assert check.retry_after_ms == 0
    else:
        # The wait is exact: one millisecond earlier the window would still be full.
        assert in_window(admitted, NOW + check.retry_after_ms) < limit
        assert in_window(admitted, NOW + check.retry_after_ms - 1) >= limit
        assert 1 <= check.retry_after_ms <= REQUEST_WINDOW_MS


@given(
    st.lists(st.integers(min_value=0, max_value=300_000), max_size=200).map(sorted),
    limits,
)
def test_admitting_by_the_window_never_exceeds_rpm_in_any_60s(
    arrivals: list[int], limit: int
) -> None:
    admitted: list[int] = []
    for t in arrivals:
        if check_requests(admitted, t, limit).allowed:
            admitted.append(t)
    for t in admitted:
        assert in_window(admitted, t) <= limit
    # And nothing was refused that fit: every refusal happened with a full window.
    for t in arrivals:
        if t not in admitted:
            assert in_window([a for a in admitted if a <= t], t) >= limit


buckets = st.dictionaries(
    st.integers(min_value=token_bucket(NOW) - 10, max_value=token_bucket(NOW)),
    st.integers(min_value=0, max_value=5_000),
    max_size=12,
)


@given(buckets, st.integers(min_value=1, max_value=20_000))
def test_token_window_decision(counts: dict[int, int], limit: int) -> None:
    check = check_tokens(counts, NOW, limit)
    used = tokens_in_window(counts, NOW)
    assert check.used == used
    assert check.allowed == (used < limit)
    if not check.allowed:
        assert tokens_in_window(counts, NOW + check.retry_after_ms) < limit
        assert tokens_in_window(counts, NOW + check.retry_after_ms - 1) >= limit
        assert check.retry_after_ms <= 6 * TOKEN_BUCKET_MS


@given(buckets)
def test_token_window_spans_six_buckets(counts: dict[int, int]) -> None:
    current = token_bucket(NOW)
    expected = sum(v for b, v in counts.items() if current - 6 < b <= current)
    assert tokens_in_window(counts, NOW) == expected


@given(st.lists(st.integers(min_value=NOW - 60_000, max_value=NOW + 60_000)), limits)
def test_concurrency_leases(expiries: list[int], limit: int) -> None:
    live = active_leases(expiries, NOW)
    assert live == sum(1 for e in expiries if e > NOW)
    check = check_concurrency(expiries, NOW, limit)
    assert check.allowed == (live < limit)
    if not check.allowed:
        assert 1 <= check.retry_after_ms <= 1000
