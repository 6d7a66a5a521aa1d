"""What the mock saw: request counts per path, streams, clients that left mid-stream,
and per model what the node did with it (loads, unloads, the highest concurrency).

Read by tests through `GET /_mock/stats`; `/_mock/*` itself is never counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DisconnectEvent", "ModelStats", "Stats"]


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
class ModelStats:
    """One model on this node. `in_flight` counts its requests from arrival (waiting
    for a load or a slot included) to the end of the answer, `generating` those holding
    a slot; both are live gauges, and the `max_` fields the highest each reached, which
    shows whether anyone sent the node more than its `parallel` at once."""

    requests: int = 0
    loads: int = 0
    unloads: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    generating: int = 0
    max_generating: int = 0

    def enter(self) -> None:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def start_generating(self) -> None:
        self.generating += 1
        self.max_generating = max(self.max_generating, self.generating)

    def restart(self) -> None:
        """Counters zeroed, live gauges kept (what is still running is still running).
        In place: the requests in flight hold this object."""
        self.requests = self.loads = self.unloads = 0
        self.max_in_flight = self.in_flight
        self.max_generating = self.generating

    def as_json(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "loads": self.loads,
            "unloads": self.unloads,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "generating": self.generating,
            "max_generating": self.max_generating,
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
    models: dict[str, ModelStats] = field(default_factory=dict)

    def count(self, path: str) -> None:
        """Count one received request."""
        self.requests[path] = self.requests.get(path, 0) + 1

    def model(self, name: str) -> ModelStats:
        """The counters of one model (by its catalogue name)."""
        found = self.models.get(name)
        if found is None:
            found = self.models[name] = ModelStats()
        return found

    def reset(self) -> None:
        """Zero everything except the live gauges (`open_streams`, models in flight)."""
        self.requests = {}
        self.models = {name: m for name, m in self.models.items() if m.in_flight}
        for m in self.models.values():
            m.restart()
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
            "models": {name: m.as_json() for name, m in sorted(self.models.items())},
        }
