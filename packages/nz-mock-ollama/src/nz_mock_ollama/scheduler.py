"""One node's scheduler, after Ollama's `server/sched.go`: loads, slots, expiry, eviction.

A request first *holds* its model's runner (`hold`): a loaded runner with the same
context size is shared at once; otherwise the request takes the pending path, which
Ollama runs one request at a time: a runner of the model with another `num_ctx` is
drained and unloaded (a reload), a node at `max_loaded_models` unloads a victim
(`Residency.victim`, waiting for it to go idle if none is), then the new runner is
registered and the request waits out the model's cold-load delay. Requests that find a
runner still loading wait for that load instead of starting another. The time until
`hold` returns is the answer's `load_duration`.

Generating then takes one of the runner's slots (`generating`): beyond `parallel` the
requests queue, first come first served, before a byte of the answer is written.

Where this differs from Ollama, on purpose: a runner that is draining takes no new
requests (in Ollama such a request can postpone the unload indefinitely), and keep-alive
expiry is noticed lazily rather than by a timer, which no client can tell apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from nz_mock_ollama.catalogue import ModelEntry
from nz_mock_ollama.keep_alive import DEFAULT_KEEP_ALIVE_S
from nz_mock_ollama.node import NodeSettings
from nz_mock_ollama.residency import Residency, Runner
from nz_mock_ollama.slots import Slots
from nz_mock_ollama.stats import Stats

__all__ = ["Scheduler"]


class Scheduler:
    """The runners of one node and the rules for sharing them."""

    def __init__(self, settings: NodeSettings, stats: Stats) -> None:
        self.settings = settings
        self.residency = Residency()
        self._stats = stats
        # Ollama's `processPending` takes one request needing a load at a time, and
        # blocks the others while it waits for a victim to unload.
        self._pending = asyncio.Lock()

    @asynccontextmanager
    async def hold(
        self, entry: ModelEntry, num_ctx: int, keep_alive: float | None
    ) -> AsyncIterator[Runner]:
        """Hold `entry`'s runner, loading it if need be, until the block ends.

        `keep_alive` is in seconds (inf: forever, 0: unload when idle); None, when the
        request did not send one, keeps the runner's own (5 minutes for a new one).
        """
        counters = self._stats.model(entry.name)
        counters.enter()
        try:
            # Ollama caps num_ctx at the model's trained context before comparing runners.
            runner = await self._runner(entry, min(num_ctx, entry.context_length), keep_alive)
            try:
                yield runner
            finally:
                self._release(runner)
        finally:
            counters.in_flight -= 1

    @asynccontextmanager
    async def generating(self, runner: Runner) -> AsyncIterator[None]:
        """Hold one of `runner`'s slots (queueing behind earlier requests) while generating."""
        async with runner.slots:
            counters = self._stats.model(runner.entry.name)
            counters.start_generating()
            try:
                yield
            finally:
                counters.generating -= 1

    def unload(self, entry: ModelEntry) -> None:
        """`keep_alive: 0` with nothing to generate: unload now, or once idle."""
        runner = self.residency.get(entry.name)
        if runner is not None:
            self._drain(runner)

    def forget(self, name: str) -> None:
        """A deleted model leaves memory at once."""
        runner = self.residency.get(name)
        if runner is not None:
            self._unload(runner)

    def reset(self, settings: NodeSettings) -> None:
        """Unload everything and take `settings` (requests in flight finish undisturbed)."""
        for runner in self.residency:
            self.residency.remove(runner)
        self.settings = settings

    def ps(self, offset_minutes: int) -> dict[str, Any]:
        """The `/api/ps` body."""
        now = self._expire()
        return self.residency.ps(now, offset_minutes)

    def settle(self) -> None:
        """Notice expired runners, so the per-model counters are current."""
        self._expire()

    async def _runner(self, entry: ModelEntry, num_ctx: int, keep_alive: float | None) -> Runner:
        while True:
            self._expire()
            runner = self.residency.get(entry.name)
            if runner is not None and not runner.draining and runner.num_ctx == num_ctx:
                runner.refs += 1
            else:
                runner = await self._schedule(entry, num_ctx, keep_alive)
            if not runner.ready.is_set():
                try:
                    await runner.ready.wait()
                except BaseException:
                    self._release(runner)
                    raise
            if runner.gone.is_set():  # its load was abandoned, or the node reset: again
                self._release(runner)
                continue
            if keep_alive is not None and not runner.draining:
                runner.session_s = keep_alive
            return runner

    async def _schedule(self, entry: ModelEntry, num_ctx: int, keep_alive: float | None) -> Runner:
        async with self._pending:
            while True:
                self._expire()
                current = self.residency.get(entry.name)
                if current is not None and not current.draining and current.num_ctx == num_ctx:
                    current.refs += 1  # loaded by a request that queued before us
                    return current
                limit = self.settings.max_loaded_models
                if current is None and (not limit or len(self.residency) < limit):
                    break
                victim = current if current is not None else self.residency.victim()
                if not self._drain(victim):
                    await victim.gone.wait()
            session = DEFAULT_KEEP_ALIVE_S if keep_alive is None else keep_alive
            runner = Runner(entry, num_ctx, session, Slots(self.settings.slots(entry)), refs=1)
            self.residency.add(runner)
            self._stats.model(entry.name).loads += 1
        delay = self.settings.load_delay(entry)
        try:
            if delay:
                await asyncio.sleep(delay)
        except BaseException:
            # The loading request left: Ollama's load follows its context and is abandoned.
            self._unload(runner)
            self._release(runner)
            raise
        runner.ready.set()
        return runner

    def _release(self, runner: Runner) -> None:
        runner.refs -= 1
        if runner.refs or not self.residency.holds(runner):
            return
        if runner.session_s == 0:
            self._unload(runner)
        else:
            runner.expires_at = time.time() + runner.session_s

    def _drain(self, runner: Runner) -> bool:
        """Mark `runner` for unloading; True if it was idle and is gone already."""
        runner.draining = True
        runner.session_s = 0
        if runner.refs == 0:
            self._unload(runner)
            return True
        return False

    def _unload(self, runner: Runner) -> None:
        if self.residency.remove(runner):
            self._stats.model(runner.entry.name).unloads += 1

    def _expire(self) -> float:
        now = time.time()
        for runner in self.residency.expired(now):
            self._unload(runner)
        return now
