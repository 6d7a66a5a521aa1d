"""Noticing that the client left, and stopping the work done for it.

Granian reports a disconnect as an ``http.disconnect`` from ``receive()`` and does not
cancel the request's task, so a watcher does: the work stops at its next ``await``,
the backend connection is dropped and the backend stops generating (SPEC §4.7). Once
the response is complete the watcher is disarmed, because Granian also reports the
normal end of the exchange as a disconnect.
"""

from __future__ import annotations

import asyncio

from nz_proxy.types import Receive

__all__ = ["DisconnectWatch"]


class DisconnectWatch:
    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._armed = True
        self._owner = asyncio.current_task()
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if self._armed and self._owner is not None:
            self.gone = True
            self._owner.cancel()

    def disarm(self) -> None:
        """The response is (about to be) complete: a disconnect now is the normal end."""
        self._armed = False

    def close(self) -> None:
        self._armed = False
        self._watcher.cancel()

    def absorb(self) -> bool:
        """Called on ``CancelledError``: whether it was ours (the client left), in which
        case the cancellation is withdrawn so the request can finish its bookkeeping."""
        if not self.gone or self._owner is None:
            return False
        self._owner.uncancel()
        return True
