"""Refusals that waiting cures say when to retry in their message, on both surfaces,
besides ``Retry-After``: chat front-ends (Open WebUI) show the body alone."""

from __future__ import annotations

import json
import re
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nz_proxy.errors import (
    BudgetExhausted,
    GatewayError,
    LimitExceeded,
    Surface,
    VerificationBusy,
    render,
    wait_in_words,
)

UNIT_SECONDS: Final = {"d": 86_400, "h": 3600, "min": 60, "s": 1}


def seconds_of(words: str) -> int:
    """``3 d 4 h`` → 273600: the words read back."""
    parts = words.split(" ")
    assert len(parts) in (2, 4), words
    return sum(int(n) * UNIT_SECONDS[unit] for n, unit in zip(parts[::2], parts[1::2], strict=True))


@pytest.mark.parametrize(
    ("ms", "words"),
    [
        (1, "1 s"),
        (1000, "1 s"),
        (1001, "2 s"),
        (12_400, "13 s"),
        (60_000, "60 s"),  # the longest rate-limit wait: still the Retry-After number
        (60_001, "1 min 1 s"),
        (120_000, "2 min"),
        (3_600_000, "1 h"),
        (19_230_000, "5 h 21 min"),
        (86_400_000, "1 d"),
        (2_606_400_000, "30 d 4 h"),
    ],
)
def test_waits_read_as_people_write_them(ms: int, words: str) -> None:
    assert wait_in_words(ms) == words


@given(st.integers(1, 40 * 86_400_000))
def test_the_words_never_promise_less_than_retry_after(ms: int) -> None:
    error = GatewayError("x", retry_after_ms=ms)
    header = int(error.headers()["Retry-After"])
    said = seconds_of(wait_in_words(ms))
    assert said >= header
    if header <= 60:
        assert said == header
    else:  # rounded up to the last unit it names
        assert said - header < 3600


REFUSALS: Final = [
    LimitExceeded("rpm_exceeded", "Request rate limit reached.", retry_after_ms=12_000),
    LimitExceeded("tpm_exceeded", "Token rate limit reached.", retry_after_ms=7_001),
    LimitExceeded("concurrency_exceeded", "Too many requests in flight.", retry_after_ms=1000),
    LimitExceeded("listing_rate_exceeded", "Listing limit.", retry_after_ms=59_000),
    BudgetExhausted("day", retry_after_ms=5 * 3_600_000 + 60_000),
    BudgetExhausted("month", retry_after_ms=3 * 86_400_000),
    VerificationBusy(retry_after_ms=2500),
]


@pytest.mark.parametrize("error", REFUSALS, ids=lambda e: getattr(e, "code", ""))
@pytest.mark.parametrize("surface", [Surface.OPENAI, Surface.OLLAMA])
def test_every_refusal_a_wait_cures_says_when(error: GatewayError, surface: Surface) -> None:
    body = json.loads(render(error, surface))
    message = body["error"] if surface is Surface.OLLAMA else body["error"]["message"]
    assert error.retry_after_ms is not None
    found = re.search(r"retry in ([0-9a-z ]+?)(?:, when it resets)?\.$", message)
    assert found, message
    assert found.group(1) == wait_in_words(error.retry_after_ms)
    assert int(error.headers()["Retry-After"]) <= seconds_of(found.group(1))


def test_the_messages_read_whole() -> None:
    assert REFUSALS[0].message == "Request rate limit reached; retry in 12 s."
    assert REFUSALS[2].message == "Too many requests in flight; retry in 1 s."
    assert REFUSALS[4].message == (
        "Token budget exhausted for period 'day'; retry in 5 h 1 min, when it resets."
    )
    assert REFUSALS[6].message == "Key verification is busy; retry in 3 s."


def test_a_budget_that_never_resets_says_so_and_sends_no_retry_after() -> None:
    total = BudgetExhausted("total", retry_after_ms=None)
    assert total.message == (
        "Token budget exhausted for period 'total', which never resets; ask for a larger budget."
    )
    assert total.headers() == {}
    assert json.loads(render(total, Surface.OLLAMA)) == {"error": total.message}
