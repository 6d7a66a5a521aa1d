"""The loaded models ("runners") of one node: what `/api/ps` shows and what gets evicted.

Bookkeeping only, with the time passed in; `scheduler` does the waiting. It follows
Ollama's `server/sched.go`: a runner in use never expires, its `keep_alive` counts from
the moment its last request ended, `keep_alive: 0` unloads it then, and an expired
runner is gone (here noticed lazily, the next time anyone looks).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nz_mock_ollama.catalogue import ModelEntry, lookup_key
from nz_mock_ollama.slots import Slots
from nz_mock_ollama.timestamps import rfc3339_nano

__all__ = ["Residency", "Runner"]

# Go prints "forever" as a far-future expiry; the exact year does not matter to clients.
_FOREVER_S = 100 * 365 * 86_400.0


@dataclass(eq=False, slots=True)
class Runner:
    """One loaded model. `refs` counts the requests holding it (the one loading it
    included); `session_s` is its keep-alive (inf: forever); `draining` means it is to
    be unloaded once idle and takes no new requests."""

    entry: ModelEntry
    num_ctx: int
    session_s: float
    slots: Slots
    refs: int = 0
    expires_at: float = math.inf  # meaningful once idle
    draining: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # loaded, or load abandoned
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # unloaded

    @property
    def key(self) -> str:
        return lookup_key(self.entry.name)

    def shown_expiry(self, now: float) -> float:
        """`expires_at` as `/api/ps` prints it: a runner in use shows `now + keep_alive`
        (Ollama's estimate while the timer is stopped)."""
        expires = self.expires_at if self.refs == 0 else now + self.session_s
        return min(expires, now + _FOREVER_S)


class Residency:
    """Runners keyed like the catalogue (one per model, as Ollama has)."""

    def __init__(self) -> None:
        self._loaded: dict[str, Runner] = {}

    def __len__(self) -> int:
        return len(self._loaded)

    def __iter__(self) -> Iterator[Runner]:
        return iter(list(self._loaded.values()))

    def get(self, name: str) -> Runner | None:
        """The runner of model `name`, if loaded (or loading)."""
        return self._loaded.get(lookup_key(name))

    def holds(self, runner: Runner) -> bool:
        """Whether `runner` is still the loaded one (not unloaded, replaced or reset)."""
        return self._loaded.get(runner.key) is runner

    def add(self, runner: Runner) -> None:
        self._loaded[runner.key] = runner

    def remove(self, runner: Runner) -> bool:
        """Unload `runner`, waking whoever waits on it; False if it was already gone."""
        if not self.holds(runner):
            return False
        del self._loaded[runner.key]
        runner.gone.set()
        runner.ready.set()
        return True

    def expired(self, now: float) -> list[Runner]:
        """Idle runners whose keep-alive has run out."""
        return [r for r in self._loaded.values() if r.refs == 0 and r.expires_at <= now]

    def victim(self) -> Runner:
        """The runner to unload to make room (the node must hold one), as Ollama's
        `findRunnerToUnload` picks it: shortest keep-alive first, then by model file (the
        digest, here); an idle one if any, else the first, which the caller waits for."""
        ordered = sorted(self._loaded.values(), key=lambda r: (r.session_s, r.entry.digest))
        return next((r for r in ordered if r.refs == 0), ordered[0])

    def ps(self, now: float, offset_minutes: int) -> dict[str, Any]:
        """The `/api/ps` body: loaded models, longest remaining first."""
        shown = sorted(
            ((r.shown_expiry(now), r) for r in self._loaded.values()),
            key=lambda pair: int(pair[0]),
            reverse=True,
        )
        models = [
            {
                "name": r.entry.name,
                "model": r.entry.name,
                "size": r.entry.size,
                "digest": r.entry.digest,
                "details": r.entry.details(),
                "expires_at": rfc3339_nano(int(expires * 1e9), offset_minutes),
                "size_vram": r.entry.size,
                "context_length": r.num_ctx,
            }
            for expires, r in shown
        ]
        return {"models": models}
