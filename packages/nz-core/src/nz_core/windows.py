"""Rate-window arithmetic (SPEC §4.4), written plainly so it can serve as the reference
model that both state stores (Redis scripts, in-process) are property-tested against.

* Requests: an exact sliding window. At most ``rpm`` requests are admitted in any
  60-second window; a request admitted at ``t`` counts while ``now < t + 60 s``.
* Tokens: a sliding window of six 10-second buckets (the current one and the five
  before it). A request is admitted while the tokens already counted are below
  ``tpm``; the request's own tokens may take the window past it.
* Concurrency: leases that expire unless renewed; a lease counts while ``now < expiry``.

Times are integer milliseconds on whatever clock the store uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "REQUEST_WINDOW_MS",
    "TOKEN_BUCKET_MS",
    "TOKEN_WINDOW_BUCKETS",
    "WindowCheck",
    "active_leases",
    "check_concurrency",
    "check_requests",
    "check_tokens",
    "check_window",
    "token_bucket",
    "tokens_in_window",
]

REQUEST_WINDOW_MS: Final = 60_000
TOKEN_BUCKET_MS: Final = 10_000
TOKEN_WINDOW_BUCKETS: Final = 6


@dataclass(frozen=True, slots=True)
class WindowCheck:
    """The outcome of checking one limit before a request.

    ``used`` is what the window held before this request; ``remaining`` is what is left
    once this request is counted (0 when denied); ``retry_after_ms`` is how long until a
    denied request could pass (0 when allowed); ``reset_ms`` is how long until the
    oldest entry counted leaves the window.
    """

    allowed: bool
    used: int
    remaining: int
    retry_after_ms: int
    reset_ms: int


def check_requests(admitted_at: Iterable[int], now_ms: int, limit: int) -> WindowCheck:
    """Check the exact 60 s request window holding the admission times ``admitted_at``."""
    return check_window(
        sorted(t for t in admitted_at if t > now_ms - REQUEST_WINDOW_MS), now_ms, limit
    )


def check_window(in_window: Sequence[int], now_ms: int, limit: int, count: int = 1) -> WindowCheck:
    """:func:`check_requests` for admission times already inside the window, oldest
    first (a store that keeps them so pays nothing to sort or filter). ``count`` is how
    many requests the admission counts as (a fan-out of several backend calls)."""
    used = len(in_window)
    oldest = in_window[0] if in_window else now_ms
    reset = oldest + REQUEST_WINDOW_MS - now_ms
    if used + count <= limit:
        return WindowCheck(True, used, limit - used - count, 0, reset)
    if count > limit:
        # It never fits: no wait helps, and a whole window is the honest least of it.
        return WindowCheck(False, used, 0, REQUEST_WINDOW_MS, reset)
    # ``used + count - limit`` entries must leave before this fits; the last of them is
    # ``in_window[used + count - limit - 1]``.
    frees_at = in_window[used + count - limit - 1] + REQUEST_WINDOW_MS
    return WindowCheck(False, used, 0, max(1, frees_at - now_ms), reset)


def token_bucket(now_ms: int) -> int:
    """The index of the 10-second bucket that ``now_ms`` falls in."""
    return now_ms // TOKEN_BUCKET_MS


def tokens_in_window(buckets: Mapping[int, int], now_ms: int) -> int:
    """Tokens counted in the current bucket and the five before it."""
    current = token_bucket(now_ms)
    return sum(v for b, v in buckets.items() if current - TOKEN_WINDOW_BUCKETS < b <= current)


def check_tokens(buckets: Mapping[int, int], now_ms: int, limit: int) -> WindowCheck:
    """Check the token window: admitted while what is counted is below ``limit``."""
    current = token_bucket(now_ms)
    # An emptied bucket (its reservation settled at zero) counts nothing.
    live = sorted(
        (b, v)
        for b, v in buckets.items()
        if current - TOKEN_WINDOW_BUCKETS < b <= current and v > 0
    )
    used = sum(v for _, v in live)
    oldest = live[0][0] if live else current
    reset = (oldest + TOKEN_WINDOW_BUCKETS) * TOKEN_BUCKET_MS - now_ms
    if used < limit:
        return WindowCheck(True, used, limit - used, 0, reset)
    # Drop buckets oldest first until the window falls below the limit.
    left = used
    for bucket, tokens in live:
        left -= tokens
        if left < limit:
            wait = (bucket + TOKEN_WINDOW_BUCKETS) * TOKEN_BUCKET_MS - now_ms
            return WindowCheck(False, used, 0, max(1, wait), reset)
    raise AssertionError("unreachable: the window empties after its last bucket")


def active_leases(expiries: Iterable[int], now_ms: int) -> int:
    """How many leases are still held at ``now_ms``."""
    return sum(1 for expiry in expiries if expiry > now_ms)


def check_concurrency(
    expiries: Iterable[int], now_ms: int, limit: int, count: int = 1
) -> WindowCheck:
    """Check the in-flight limit for a request that needs ``count`` slots. A denied
    request can retry once a lease ends, which cannot be predicted, so the wait is the
    sooner of 1 s and the earliest expiry."""
    live = sorted(e for e in expiries if e > now_ms)
    used = len(live)
    if used + count <= limit:
        return WindowCheck(True, used, limit - used - count, 0, 0)
    first = live[0] - now_ms if live else 1000
    return WindowCheck(False, used, 0, max(1, min(1000, first)), first if live else 0)
