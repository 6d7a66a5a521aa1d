"""The mock's mutable state, one object per app, reachable from handlers via `STATE`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from nz_mock_ollama.catalogue import Catalogue
from nz_mock_ollama.config import MockConfig
from nz_mock_ollama.faults import Failure, FaultSpec, take_failure
from nz_mock_ollama.generation import Corpus, default_corpus
from nz_mock_ollama.received import ReceivedLog
from nz_mock_ollama.scheduler import Scheduler
from nz_mock_ollama.stats import Stats

__all__ = ["STATE", "MockState"]


@dataclass(slots=True)
class MockState:
    """Models, faults, counters, received bodies, the loaded models (`scheduler`) and the
    generation knobs the control API may change."""

    config: MockConfig
    catalogue: Catalogue
    faults: FaultSpec
    token_rate: float
    response_tokens: int
    stats: Stats = field(default_factory=Stats)
    received: ReceivedLog = field(default_factory=ReceivedLog)
    blobs: set[str] = field(default_factory=set)
    corpus: Corpus = field(default_factory=default_corpus)
    # Set by the server that owns the listener; `seconds -> until (epoch s)`.
    refuse_connections: Callable[[float], Awaitable[float]] | None = None
    refusing_until: float | None = None
    scheduler: Scheduler = field(init=False)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.config.node, self.stats)

    @classmethod
    def from_config(cls, config: MockConfig) -> MockState:
        """Fresh state as the config describes it."""
        return cls(
            config=config,
            catalogue=Catalogue.from_names(config.models, config.utc_offset_minutes),
            faults=config.faults,
            token_rate=config.token_rate,
            response_tokens=config.response_tokens,
        )

    @property
    def offset_minutes(self) -> int:
        """The "local" zone of `modified_at`/`expires_at`."""
        return self.config.utc_offset_minutes

    @property
    def frame_interval(self) -> float:
        """Seconds between streamed frames (0 when the token rate is 0, i.e. unpaced)."""
        return 1.0 / self.token_rate if self.token_rate > 0 else 0.0

    def take_failure(self, path: str) -> Failure | None:
        """Consume one injected failure for `path`, if one is armed."""
        self.faults, failure = take_failure(self.faults, path)
        return failure

    def reset(self) -> None:
        """Back to startup: counters zeroed, received bodies and faults cleared, models and
        knobs as configured."""
        self.stats.reset()
        self.received.clear()
        self.faults = FaultSpec()
        self.catalogue = Catalogue.from_names(self.config.models, self.config.utc_offset_minutes)
        self.scheduler.reset(self.config.node)
        self.blobs.clear()
        self.token_rate = self.config.token_rate
        self.response_tokens = self.config.response_tokens

    def refusing(self) -> bool:
        """Whether the listener is currently down on purpose."""
        return self.refusing_until is not None and self.refusing_until > time.time()


STATE = web.AppKey("nz_mock_ollama.state", MockState)
