"""What the mock saw: request counts per path, streams, and clients that left mid-stream.

Read by tests through `GET /_mock/stats`; `/_mock/*` itself is never counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DisconnectEvent", "Stats"]


@dataclass(frozen=True, slots=True)
class DisconnectEvent:
    """A client that went away before its response was complete.

    `at` is wall-clock epoch seconds when the mock noticed, to compare with the time the
    client closed; `elapsed_s` counts from the request's arrival; `frames_sent` is how many
    NDJSON lines had been written (the mock writes none after noticing).
    """

    path: str
    at: float
    elapsed_s: float
    frames_sent: int
    noticed_by: str

    def as_json(self) -> dict[str, Any]:
        """One entry of `disconnects` in `/_mock/stats`."""
        return {
            "path": self.path,
            "at": self.at,
            "elapsed_s": round(self.elapsed_s, 6),
            "frames_sent": self.frames_sent,
            "noticed_by": self.noticed_by,
        }


@dataclass(slots=True)
class Stats:
    """Counters since startup or the last `/_mock/reset` (`open_streams` is live, never reset)."""

    requests: dict[str, int] = field(default_factory=dict)
    frames_sent: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cut: int = 0
    streams_errored: int = 0
    open_streams: int = 0
    disconnects: list[DisconnectEvent] = field(default_factory=list)

    def count(self, path: str) -> None:
        """Count one received request."""
        self.requests[path] = self.requests.get(path, 0) + 1

    def reset(self) -> None:
        """Zero everything except the live `open_streams` gauge."""
        self.requests = {}
        self.frames_sent = 0
        self.streams_started = self.streams_completed = 0
        self.streams_cut = self.streams_errored = 0
        self.disconnects = []

    def as_json(self) -> dict[str, Any]:
        """The `/_mock/stats` body (without the fault and model sections the route adds)."""
        return {
            "requests": dict(sorted(self.requests.items())),
            "total_requests": sum(self.requests.values()),
            "open_streams": self.open_streams,
            "frames_sent": self.frames_sent,
            "streams": {
                "started": self.streams_started,
                "completed": self.streams_completed,
                "cut": self.streams_cut,
                "errored": self.streams_errored,
                "disconnected": len(self.disconnects),
            },
            "disconnects": [d.as_json() for d in self.disconnects],
        }
