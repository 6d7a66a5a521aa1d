"""Requests in flight per node, shared by every replica (SPEC §4.10).

Routing needs each node's in-flight count across all replicas, and whether a load of
the model is already running there. Each replica keeps its own exactly, as leases (a
request that never ends stops counting when its lease runs out); in production it
shares them through Redis every 100 ms and reads the others' (:class:`RedisInFlight`),
so a routing decision makes no Redis call. A replica that dies stops counting when its
share expires. Embedded mode is one process (:class:`MemoryInFlight`).

Routing is an optimisation, not governance: when Redis fails here the request is
routed on what this replica knows, never refused.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["InFlightStore", "Load", "MemoryInFlight", "RedisInFlight"]

log = structlog.get_logger("nz_proxy.fleet.inflight")

Load = tuple[int, bool]  # requests in flight, a load of the model running


def _ms() -> int:
    return int(time.time() * 1000)


class InFlightStore(Protocol):
    """In-process bookkeeping (a routing decision does no I/O); :meth:`sync` is the
    background step that shares it, where there is anyone to share it with."""

    def read(self, nodes: Sequence[str], model: str) -> list[Load]:
        """Per node (in order): requests in flight, and whether ``model`` is loading."""
        ...

    def acquire(self, node: str, rid: str, lease_ms: int) -> None: ...

    def release(self, node: str, rid: str) -> None: ...

    def renew(self, held: Sequence[tuple[str, str]], lease_ms: int) -> None:
        """Extend the leases of (node, request id) pairs still running."""
        ...

    def mark_loading(self, node: str, model: str, ttl_ms: int) -> None: ...

    def loaded(self, node: str, model: str) -> None: ...

    async def sync(self) -> float:
        """Share this replica's counts and read the others' (a supervised step);
        returns the seconds until the next."""
        ...


class MemoryInFlight:
    """Embedded mode: one process sees every request."""

    def __init__(self, clock: Callable[[], int] = _ms) -> None:
        self.clock = clock
        self._leases: dict[str, dict[str, int]] = {}
        self._loading: dict[tuple[str, str], int] = {}

    def read(self, nodes: Sequence[str], model: str) -> list[Load]:
        now = self.clock()
        found: list[Load] = []
        for node in nodes:
            leases = self._leases.get(node, {})
            for rid in [rid for rid, until in leases.items() if until <= now]:
                del leases[rid]
            found.append((len(leases), self._loading.get((node, model), 0) > now))
        return found

    def acquire(self, node: str, rid: str, lease_ms: int) -> None:
        self._leases.setdefault(node, {})[rid] = self.clock() + lease_ms

    def release(self, node: str, rid: str) -> None:
        self._leases.get(node, {}).pop(rid, None)

    def renew(self, held: Sequence[tuple[str, str]], lease_ms: int) -> None:
        until = self.clock() + lease_ms
        for node, rid in held:
            leases = self._leases.get(node)
            if leases is not None and rid in leases:
                leases[rid] = until

    def mark_loading(self, node: str, model: str, ttl_ms: int) -> None:
        self._loading[(node, model)] = self.clock() + ttl_ms

    def loaded(self, node: str, model: str) -> None:
        self._loading.pop((node, model), None)

    async def sync(self) -> float:
        return 3600.0  # one process: nothing to share

    def snapshot(self, now: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """Requests in flight per node, and the loads running, as of ``now``."""
        counts = {
            node: sum(1 for until in leases.values() if until > now)
            for node, leases in self._leases.items()
        }
        return counts, [mark for mark, until in self._loading.items() if until > now]


SHARED_KEY = "gateway:fleet:inflight"
LOADING_KEY = "gateway:fleet:loading"
# How often a replica publishes its counts and reads the others'; a replica silent for
# SHARE_TTL_MS (it died) stops counting.
SYNC_S = 0.1
SHARE_TTL_MS = 2_000


class RedisInFlight(MemoryInFlight):
    """Production: each replica counts its own requests per node, exactly and in the
    process, and every ``SYNC_S`` publishes the counts and reads the other replicas' in
    one round trip (a hash field per replica and node, stamped with when it expires).

    Routing then costs no Redis call per request: it reads counts that are exact for
    this replica and at most ``SYNC_S`` old for the others, which two random choices
    tolerate by design. A replica that dies stops being counted once its stamp expires,
    as a lease would.
    """

    def __init__(
        self, redis: Redis, replica: str | None = None, clock: Callable[[], int] = _ms
    ) -> None:
        super().__init__(clock)
        self.redis = redis
        self.replica = replica or uuid.uuid4().hex[:12]
        self._others: dict[str, int] = {}
        self._others_loading: set[tuple[str, str]] = set()

    def read(self, nodes: Sequence[str], model: str) -> list[Load]:
        return [
            (count + self._others.get(node, 0), loading or (node, model) in self._others_loading)
            for node, (count, loading) in zip(nodes, super().read(nodes, model), strict=True)
        ]

    async def sync(self) -> float:
        """Publish this replica's counts, read the others' (a supervised step)."""
        now = self.clock()
        until = now + SHARE_TTL_MS
        counts, loading = self.snapshot(now)
        mine = {f"{self.replica}|{node}": f"{count}|{until}" for node, count in counts.items()}
        marks = {f"{self.replica}|{node}|{model}": str(until) for node, model in loading}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if mine:
                    pipe.hset(SHARED_KEY, mapping=mine)  # type: ignore[arg-type]
                if marks:
                    pipe.hset(LOADING_KEY, mapping=marks)  # type: ignore[arg-type]
                pipe.hgetall(SHARED_KEY)
                pipe.hgetall(LOADING_KEY)
                *_, shared, shared_loading = await asyncio.shield(pipe.execute())
        except RedisError as exc:
            log.warning("inflight_sync_failed", error=type(exc).__name__)
            return SYNC_S
        self._others, stale = _others(shared, self.replica, now)
        self._others_loading, stale_marks = _others_loading(shared_loading, self.replica, now)
        if stale or stale_marks:
            await self._forget(stale, stale_marks)
        return SYNC_S

    async def _forget(self, stale: list[bytes], stale_marks: list[bytes]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if stale:
                    pipe.hdel(SHARED_KEY, *stale)
                if stale_marks:
                    pipe.hdel(LOADING_KEY, *stale_marks)
                await asyncio.shield(pipe.execute())
        except RedisError as exc:
            log.warning("inflight_sync_failed", error=type(exc).__name__)


def _others(
    shared: dict[bytes, bytes], replica: str, now: int
) -> tuple[dict[str, int], list[bytes]]:
    """Other replicas' counts per node, and the fields that expired."""
    counts: dict[str, int] = {}
    stale: list[bytes] = []
    for field, value in shared.items():
        owner, _, node = field.decode().partition("|")
        count, _, until = value.decode().partition("|")
        if int(until) <= now:
            stale.append(field)
        elif owner != replica:
            counts[node] = counts.get(node, 0) + int(count)
    return counts, stale


def _others_loading(
    shared: dict[bytes, bytes], replica: str, now: int
) -> tuple[set[tuple[str, str]], list[bytes]]:
    marks: set[tuple[str, str]] = set()
    stale: list[bytes] = []
    for field, value in shared.items():
        owner, node, model = field.decode().split("|", 2)
        if int(value) <= now:
            stale.append(field)
        elif owner != replica:
            marks.add((node, model))
    return marks, stale
