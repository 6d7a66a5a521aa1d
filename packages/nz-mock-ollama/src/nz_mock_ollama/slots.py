"""A loaded model's generation slots: Ollama's `OLLAMA_NUM_PARALLEL` semaphore.

At most `capacity` requests generate at once (0: no limit); the others wait first come,
first served, without bound, as they do on the runner's `semaphore.Weighted` in Ollama.
asyncio's own Semaphore does not promise that order, so this one keeps the queue itself.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Slots"]


class Slots:
    """`async with slots:` holds one slot for the body of the block."""

    __slots__ = ("_waiters", "busy", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> None:
        """Take a slot, waiting behind everyone who asked before."""
        if not self.capacity or (self.busy < self.capacity and not self._waiters):
            self.busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: `busy` already counts us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot as we were cancelled: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give the slot to the first request still waiting, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy -= 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
