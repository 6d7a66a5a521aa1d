"""Go-style RFC 3339 timestamps (`time.RFC3339Nano`), which Ollama prints everywhere.

Go trims trailing zeros from the fraction and drops the dot when the fraction is zero;
UTC prints as `Z`, other zones as `±hh:mm`.
"""

from __future__ import annotations

import time

__all__ = ["rfc3339_nano", "utc_now"]


def rfc3339_nano(epoch_ns: int, offset_minutes: int = 0) -> str:
    """Format an instant as Go's RFC3339Nano in a zone `offset_minutes` east of UTC."""
    seconds, fraction = divmod(epoch_ns, 1_000_000_000)
    wall = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds + offset_minutes * 60))
    frac = f".{fraction:09d}".rstrip("0") if fraction else ""
    if offset_minutes == 0:
        return f"{wall}{frac}Z"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{wall}{frac}{sign}{hours:02d}:{minutes:02d}"


class _UtcClock:
    """`utc_now` runs once per streamed frame; the formatted second changes rarely."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        second, fraction = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        if not fraction:
            return f"{self._prefix}Z"
        return f"{self._prefix}.{fraction:09d}".rstrip("0") + "Z"


_CLOCK = _UtcClock()


def utc_now() -> str:
    """`created_at` for a frame: now, in UTC (same format as `rfc3339_nano(now)`)."""
    return _CLOCK.now()
