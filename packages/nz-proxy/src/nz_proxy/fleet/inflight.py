"""Requests in flight per node, shared by every replica (SPEC §4.10).

Routing needs each node's in-flight count across all replicas, and whether a load of
the model is already running there. Both are leases: a replica that dies mid-request
leaves entries that expire by themselves, as the admission's concurrency leases do.
In Redis a node's requests are one sorted set (member: request id, score: expiry), a
running load one key with a TTL; embedded mode keeps the same in the process.

Routing is an optimisation, not governance: when Redis fails here the request is
routed on what this replica knows (counts of zero), never refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

__all__ = ["InFlightStore", "Load", "MemoryInFlight", "RedisInFlight"]

log = structlog.get_logger("nz_proxy.fleet.inflight")

Load = tuple[int, bool]  # requests in flight, a load of the model running


def _ms() -> int:
    return int(time.time() * 1000)


class InFlightStore(Protocol):
    async def read(self, nodes: Sequence[str], model: str) -> list[Load]:
        """Per node (in order): requests in flight, and whether ``model`` is loading."""
        ...

    async def acquire(self, node: str, rid: str, lease_ms: int) -> None: ...

    async def release(self, node: str, rid: str) -> None: ...

    async def renew(self, held: Sequence[tuple[str, str]], lease_ms: int) -> None:
        """Extend the leases of (node, request id) pairs still running."""
        ...

    async def mark_loading(self, node: str, model: str, ttl_ms: int) -> None: ...

    async def loaded(self, node: str, model: str) -> None: ...


class MemoryInFlight:
    """Embedded mode: one process sees every request."""

    def __init__(self, clock: Callable[[], int] = _ms) -> None:
        self.clock = clock
        self._leases: dict[str, dict[str, int]] = {}
        self._loading: dict[tuple[str, str], int] = {}

    async def read(self, nodes: Sequence[str], model: str) -> list[Load]:
        now = self.clock()
        found: list[Load] = []
        for node in nodes:
            leases = self._leases.get(node, {})
            for rid in [rid for rid, until in leases.items() if until <= now]:
                del leases[rid]
            found.append((len(leases), self._loading.get((node, model), 0) > now))
        return found

    async def acquire(self, node: str, rid: str, lease_ms: int) -> None:
        self._leases.setdefault(node, {})[rid] = self.clock() + lease_ms

    async def release(self, node: str, rid: str) -> None:
        self._leases.get(node, {}).pop(rid, None)

    async def renew(self, held: Sequence[tuple[str, str]], lease_ms: int) -> None:
        until = self.clock() + lease_ms
        for node, rid in held:
            leases = self._leases.get(node)
            if leases is not None and rid in leases:
                leases[rid] = until

    async def mark_loading(self, node: str, model: str, ttl_ms: int) -> None:
        self._loading[(node, model)] = self.clock() + ttl_ms

    async def loaded(self, node: str, model: str) -> None:
        self._loading.pop((node, model), None)


def lease_key(node: str) -> str:
    return f"gateway:backend:{node}:inflight"


def loading_key(node: str, model: str) -> str:
    return f"gateway:backend:{node}:loading:{model}"


class RedisInFlight:
    """Production: one pipelined round trip per routing decision."""

    def __init__(self, redis: Redis, clock: Callable[[], int] = _ms) -> None:
        self.redis = redis
        self.clock = clock

    async def read(self, nodes: Sequence[str], model: str) -> list[Load]:
        now = self.clock()

        async def counts() -> list[object]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.zcount(lease_key(node), now + 1, "+inf")
                    pipe.exists(loading_key(node, model))
                return await pipe.execute()

        try:
            replies = await asyncio.shield(counts())
        except RedisError as exc:
            log.warning("inflight_read_failed", error=type(exc).__name__)
            return [(0, False) for _ in nodes]
        return [(int(str(replies[i])), bool(replies[i + 1])) for i in range(0, len(replies), 2)]

    async def acquire(self, node: str, rid: str, lease_ms: int) -> None:
        now = self.clock()
        key = lease_key(node)
        await self._quietly(
            lambda pipe: (
                pipe.zremrangebyscore(key, "-inf", now),  # leases of replicas that died
                pipe.zadd(key, {rid: now + lease_ms}),
                pipe.pexpire(key, lease_ms * 2),
            )
        )

    async def release(self, node: str, rid: str) -> None:
        await self._quietly(lambda pipe: pipe.zrem(lease_key(node), rid))

    async def renew(self, held: Sequence[tuple[str, str]], lease_ms: int) -> None:
        until = self.clock() + lease_ms

        def extend(pipe: Pipeline) -> None:
            for node, rid in held:
                pipe.zadd(lease_key(node), {rid: until}, xx=True)
                pipe.pexpire(lease_key(node), lease_ms * 2)

        if held:
            await self._quietly(extend)

    async def mark_loading(self, node: str, model: str, ttl_ms: int) -> None:
        await self._quietly(lambda pipe: pipe.set(loading_key(node, model), 1, px=ttl_ms))

    async def loaded(self, node: str, model: str) -> None:
        await self._quietly(lambda pipe: pipe.delete(loading_key(node, model)))

    async def _quietly(self, build: Callable[[Pipeline], object]) -> None:
        async def run() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                build(pipe)
                await pipe.execute()

        try:
            # A command cancelled half-way would leave its reply on the pooled
            # connection for the next command (the admission's) to read: shielded.
            await asyncio.shield(run())
        except RedisError as exc:
            log.warning("inflight_write_failed", error=type(exc).__name__)
