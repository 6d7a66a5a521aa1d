"""Stream framing stays linear in the bytes fed (on demand: `pytest -m benchmark`)."""

from __future__ import annotations

import time

import pytest

from nz_proxy.translation.framing import NdjsonSplitter
from tests.sse import SseParser

pytestmark = pytest.mark.benchmark


def test_tiny_chunks_after_a_big_pending_line_cost_o1_each() -> None:
    # 1,024 one-byte chunks onto 8 MiB of pending line: a reader that copies or
    # rescans its buffer per chunk moves 8 GiB (seconds); a linear one, a kilobyte.
    big = b"x" * (8 << 20)
    for feed in (NdjsonSplitter().feed, SseParser().feed):
        started = time.perf_counter()
        assert feed(b"data: " + big) == []
        for _ in range(1024):
            assert feed(b"y") == []
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0, f"{feed.__qualname__} took {elapsed:.2f}s"
