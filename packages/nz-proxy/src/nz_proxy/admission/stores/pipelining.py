"""Script calls made together go to Redis as one pipeline (auto-pipelining).

Under load, many requests admit or settle in the same turn of the event loop. Sent one
by one, each call pays redis-py's whole per-call cost: a pool checkout, the retry
wrapper, a timeout, a socket write and a read. Profiles put that above the rest of the
request (docs/benchmarks.md). Sent as one pipeline, the calls pay it once. Each call is
still its own ``EVALSHA``, atomic on its own: the round trips per request do not change,
only how many ride in one write.

A call made while nothing else is on the wire goes straight out, so a lone request
waits for no batch. Errors keep their meaning: a connection error or timeout reaches
every caller of the batch (each fails closed as before), a script's own error reaches
only its caller, and a script Redis lost (``NOSCRIPT`` after a restart) is sent again
by redis-py's script object, which loads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["ScriptPipeline"]

Arg = str | int | bytes


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[Arg]
    reply: asyncio.Future[Any]


class ScriptPipeline:
    """Runs registered scripts, batching the calls that arrive together. With
    ``deadline_s``, a caller waits no longer than that for its reply, however the time
    goes (a free connection, a new connection's handshake, the reply): it gets Redis's
    own ``TimeoutError``, as from a socket timeout."""

    def __init__(self, redis: Redis, deadline_s: float | None = None) -> None:
        self._redis = redis
        self._deadline_s = deadline_s
        self._queue: list[_Call] = []
        self._on_wire = 0  # direct calls and batches sent, not yet answered
        self._batches: set[asyncio.Task[None]] = set()

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """The script's reply, as ``await script(keys=keys, args=args)`` would give it."""
        try:
            async with asyncio.timeout(self._deadline_s):
                return await self._run(script, keys, args)
        except TimeoutError:
            raise RedisTimeoutError(f"no reply within {self._deadline_s} s") from None

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        if not self._on_wire and not self._queue:
            self._on_wire += 1
            try:
                return await script(keys=keys, args=args)
            finally:
                self._on_wire -= 1
        loop = asyncio.get_running_loop()
        if not self._queue:
            # Everything queued before the loop comes round again rides in this batch.
            loop.call_soon(self._flush)
        call = _Call(script, keys, args, loop.create_future())
        self._queue.append(call)
        return await call.reply

    def _flush(self) -> None:
        batch = [call for call in self._queue if not call.reply.cancelled()]
        self._queue = []
        if not batch:
            return
        self._on_wire += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for call in batch:
                    pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
                replies = await pipe.execute(raise_on_error=False)
            for call, reply in zip(batch, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    reply = await _reload(call)
                _answer(call, reply)
        except Exception as error:
            for call in batch:
                if not call.reply.done():
                    call.reply.set_exception(error)
        except BaseException:  # cancelled (shutdown): so are the calls it carried
            for call in batch:
                call.reply.cancel()
            raise
        finally:
            self._on_wire -= 1


async def _reload(call: _Call) -> Any:
    # The script object loads the script and calls again. Its failure is this call's
    # alone: the replies after it in the batch are already in hand.
    try:
        return await call.script(keys=call.keys, args=call.args)
    except Exception as error:
        return error


def _answer(call: _Call, reply: Any) -> None:
    if call.reply.done():  # its caller went away; the call itself was made
        return
    if isinstance(reply, Exception):
        call.reply.set_exception(reply)
    else:
        call.reply.set_result(reply)
