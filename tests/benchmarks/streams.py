"""Streaming figures: time to first token, the gap between chunks, and memory at
1,000 concurrent streams.

The client is aiohttp in the harness process. Streams are paced by the mock Ollama
at a fixed token rate, so the direct figures are the mock's own pacing and whatever
a system adds on top is its cost. A content frame is an NDJSON line (native) or an
SSE ``data:`` line (OpenAI) that carries text.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

__all__ = ["StreamTimes", "content_frames", "hold_streams", "time_streams"]


def content_frames(line: bytes) -> int:
    """1 when a native or OpenAI stream line carries generated text, else 0."""
    line = line.strip()
    if line.startswith(b"data:"):
        line = line[5:].strip()
        if line == b"[DONE]":
            return 0
    if not line:
        return 0
    try:
        frame = json.loads(line)
    except ValueError:
        return 0
    if "choices" in frame:
        choices = frame["choices"]
        return int(bool(choices and (choices[0].get("delta") or {}).get("content")))
    return int(bool((frame.get("message") or {}).get("content") or frame.get("response")))


@dataclass
class StreamTimes:
    """Per stream: seconds to the first content frame; all gaps between frames."""

    first: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    failures: int = 0

    def summary(self) -> dict[str, float | int]:
        def pct(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

        return {
            "streams": len(self.first),
            "failures": self.failures,
            "ttft_p50_ms": statistics.median(self.first) * 1000,
            "ttft_p99_ms": pct(self.first, 0.99),
            "gap_p50_ms": statistics.median(self.gaps) * 1000,
            "gap_p99_ms": pct(self.gaps, 0.99),
            "gap_mean_ms": statistics.fmean(self.gaps) * 1000,
        }


async def _one_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    on_first: Callable[[], None] | None = None,
) -> tuple[float, list[float], int]:
    """Send one streamed request; return (first-frame delay, frame times, frames)."""
    started = time.perf_counter()
    stamps: list[float] = []
    async with session.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
        pending = b""
        async for chunk in response.content.iter_any():
            now = time.perf_counter()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if content_frames(line):
                    if not stamps and on_first is not None:
                        on_first()
                    stamps.append(now)
    if not stamps:
        raise RuntimeError(f"{url}: a stream with no content")
    return stamps[0] - started, stamps, len(stamps)


async def time_streams(
    url: str, body: bytes, headers: dict[str, str], *, count: int, warmup: int = 3
) -> StreamTimes:
    """``count`` streams one after another (concurrency 1), after ``warmup`` unmeasured."""
    times = StreamTimes()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for index in range(warmup + count):
            try:
                first, stamps, _ = await _one_stream(session, url, body, headers)
            except (aiohttp.ClientError, RuntimeError, TimeoutError):
                times.failures += 1
                continue
            if index >= warmup:
                times.first.append(first)
                times.gaps.extend(b - a for a, b in itertools.pairwise(stamps))
    return times


@dataclass
class HeldStreams:
    """What happened to ``count`` concurrent streams."""

    started: int
    completed: int
    failures: int
    frames: int
    all_open_s: float | None
    peak_rss: dict[int, int]
    errors: list[str]


async def hold_streams(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    count: int,
    sample_rss: Callable[[], dict[int, int]],
    open_within_s: float = 60.0,
) -> HeldStreams:
    """Open ``count`` streams at once; sample RSS once all have produced a frame, and
    again while they run; wait for them to finish."""
    opened = 0
    all_open = asyncio.Event()

    def first_frame() -> None:
        nonlocal opened
        opened += 1
        if opened == count:
            all_open.set()

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=open_within_s + 300)
    peak: dict[int, int] = {}

    def sample() -> None:
        for pid, rss in sample_rss().items():
            peak[pid] = max(peak.get(pid, 0), rss)

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [
            asyncio.create_task(_one_stream(session, url, body, headers, first_frame))
            for _ in range(count)
        ]
        waiter = asyncio.create_task(all_open.wait())
        all_open_s: float | None = None
        while not all(task.done() for task in tasks):
            sample()
            if waiter.done() and all_open_s is None:
                all_open_s = time.perf_counter() - started
            if time.perf_counter() - started > open_within_s and not waiter.done():
                # The system could not open them all in time: that is the result.
                for task in tasks:
                    task.cancel()
                break
            await asyncio.sleep(0.25)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        waiter.cancel()
    errors = [repr(result) for result in results if isinstance(result, BaseException)]
    frames = sum(result[2] for result in results if isinstance(result, tuple))
    return HeldStreams(
        started=count,
        completed=count - len(errors),
        failures=len(errors),
        frames=frames,
        all_open_s=all_open_s,
        peak_rss=peak,
        errors=sorted(set(errors))[:5],
    )
