"""The fleet against fake nodes: what reaches which node, and what happens when one fails.

Each node is a :class:`~tests.inprocess.FakeBackend` with its own catalogue and its own
``/api/ps``; the fleet is built as the gateway builds it, with the in-flight leases in
the process or in Redis (two fleets on one Redis are two replicas).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from nz_core.backends import Backend as Spec
from nz_core.backends import BackendStatus
from nz_core.routing import Reason
from nz_proxy.breaker import BreakerState, CircuitBreaker
from nz_proxy.discovery import MemoryCatalogueStore
from nz_proxy.errors import UpstreamUnavailable
from nz_proxy.fleet.fleet import Fleet
from nz_proxy.fleet.inflight import (
    SHARE_TTL_MS,
    SHARED_KEY,
    InFlightStore,
    MemoryInFlight,
    RedisInFlight,
)
from nz_proxy.upstream import Upstream
from tests import services
from tests.inprocess import FakeBackend, tags

FLEET_DB = services.REDIS_DB + 2  # shared with the state tests, which flush it too


@dataclass
class Node:
    """A fake Ollama node: its models, what it has loaded, what it served."""

    models: tuple[str, ...]
    loaded: dict[str, int] = field(default_factory=dict)  # model → context length
    status: int = 200
    load_ns: int = 1  # what the final frame says the load took
    served: list[str] = field(default_factory=list)
    hold: asyncio.Event | None = None
    backend: FakeBackend | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/api/tags":
            return tags(self.models)
        if request.path == "/api/ps":
            entries = [
                {"model": m, "name": m, "context_length": n, "expires_at": "2318-01-01T00:00:00Z"}
                for m, n in self.loaded.items()
            ]
            return web.json_response({"models": entries})
        if request.path == "/api/version":
            return web.json_response({"version": "0.12.0"})
        model = (await request.json())["model"]
        self.served.append(model)
        self.arrived.set()
        if self.status != 200:
            return web.json_response({"error": "server busy"}, status=self.status)
        if self.hold is not None:
            await self.hold.wait()
        return web.json_response({"model": model, "done": True, "load_duration": self.load_ns})


def connect(url: str) -> Upstream:
    return Upstream(url, connect_timeout_s=1, read_timeout_s=5, breaker=CircuitBreaker(2, 30))


def dead_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(params=["memory", "redis"])
async def inflight(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], InFlightStore]]:
    if request.param == "memory":
        shared = MemoryInFlight()
        yield lambda: shared
        return
    client = aioredis.Redis.from_url(services.redis_url(FLEET_DB))
    await client.flushdb()
    try:
        yield lambda: RedisInFlight(client)
    finally:
        await client.aclose()


@pytest.fixture
async def nodes() -> AsyncIterator[dict[str, Node]]:
    found = {
        "a": Node(("llama3.2:latest", "qwen2.5:7b")),
        "b": Node(("llama3.2:latest", "qwen2.5:7b")),
        "c": Node(("llama3.2:latest", "all-minilm:latest")),
    }
    async with AsyncExitStack() as stack:
        for node in found.values():
            node.backend = await stack.enter_async_context(FakeBackend(node.handle))
            node.backend.answers_tags = True
        yield found


def specs(nodes: dict[str, Node], **status: BackendStatus) -> list[Spec]:
    return [
        Spec(name, node.backend.url, 1, status.get(name, BackendStatus.ACTIVE))
        for name, node in nodes.items()
        if node.backend is not None
    ]


async def fleet_of(items: list[Spec], inflight: InFlightStore) -> Fleet:
    fleet = Fleet(
        connect,
        inflight,
        lambda _name: MemoryCatalogueStore(),
        refresh_s=60,
        ttl_s=300,
        lease_ms=30_000,
    )
    await fleet.apply(items)
    return fleet


def body(model: str) -> bytes:
    return b'{"model":"%s"}' % model.encode()


async def send(fleet: Fleet, model: str, rid: str, num_ctx: int | None = None) -> str:
    routed = await fleet.send(model, num_ctx, rid, "/api/chat", body(model))
    await routed.reply.read()
    routed.finish()
    return routed.backend.name


async def test_a_model_reaches_only_the_nodes_that_have_it(
    nodes: dict[str, Node], inflight: Callable[[], InFlightStore]
) -> None:
    fleet = await fleet_of(specs(nodes), inflight())
    try:
        assert set(fleet.require().names) == {"llama3.2:latest", "qwen2.5:7b", "all-minilm:latest"}
        for i in range(6):
            assert await send(fleet, "all-minilm:latest", f"r{i}") == "c"
        with pytest.raises(UpstreamUnavailable):
            await fleet.send("mistral:latest", None, "r9", "/api/chat", body("mistral:latest"))
        assert not any("mistral:latest" in node.served for node in nodes.values())
    finally:
        await fleet.close()


async def test_a_warm_node_takes_every_sequential_request(
    nodes: dict[str, Node], inflight: Callable[[], InFlightStore]
) -> None:
    nodes["b"].loaded["llama3.2:latest"] = 4096
    fleet = await fleet_of(specs(nodes), inflight())
    try:
        chosen = [await send(fleet, "llama3.2:latest", f"r{i}") for i in range(50)]
        assert chosen == ["b"] * 50
        assert fleet.decisions == {("b", "warm"): 50}
        # A different context size is a reload: the model is not warm for it.
        routed = await fleet.send(
            "llama3.2:latest", 8192, "x", "/api/chat", body("llama3.2:latest")
        )
        assert routed.reason is not Reason.WARM
        routed.finish()
    finally:
        await fleet.close()


async def test_in_flight_requests_are_shared_by_replicas(
    nodes: dict[str, Node], inflight: Callable[[], InFlightStore]
) -> None:
    for node in nodes.values():
        node.loaded["llama3.2:latest"] = 4096
        node.hold = asyncio.Event()
    first = await fleet_of(specs(nodes), inflight())
    second = await fleet_of(specs(nodes), inflight())
    try:
        # Three slots in all (parallel 1 each), taken one after another through two
        # replicas: each sees the slots the other took.
        tasks = []
        for i, fleet in enumerate((first, second, first)):
            tasks.append(asyncio.create_task(send(fleet, "llama3.2:latest", f"r{i}")))
            deadline = asyncio.get_running_loop().time() + 10
            while sum(len(node.served) for node in nodes.values()) < i + 1:
                assert asyncio.get_running_loop().time() < deadline, "never reached a node"
                await asyncio.sleep(0.02)
            # What the background job does every 100 ms: each publishes, then each reads.
            for replica in (first, second, first, second):
                await replica.inflight.sync()
        busy = [name for name, node in nodes.items() if node.served]
        assert sorted(busy) == ["a", "b", "c"]
        for node in nodes.values():
            assert node.hold is not None
            node.hold.set()
        assert sorted(await asyncio.gather(*tasks)) == ["a", "b", "c"]
    finally:
        await first.close()
        await second.close()


async def test_a_node_that_cannot_be_reached_or_is_busy_is_retried_once_elsewhere(
    nodes: dict[str, Node], inflight: Callable[[], InFlightStore]
) -> None:
    items = [Spec("dead", dead_url()), *specs({"c": nodes["c"]})]
    fleet = await fleet_of(items, inflight())
    try:
        # The dead node never answered /api/tags: it has no catalogue, so no requests.
        assert fleet.backends["dead"].catalogue() is None
        assert await send(fleet, "llama3.2:latest", "r1") == "c"
    finally:
        await fleet.close()
    nodes["a"].status = 503
    nodes["a"].loaded["llama3.2:latest"] = 4096  # warm: the rule sends it to a first
    fleet = await fleet_of(specs({"a": nodes["a"], "c": nodes["c"]}), inflight())
    try:
        assert await send(fleet, "llama3.2:latest", "r1") == "c"
        assert nodes["a"].served == ["llama3.2:latest"]  # a said 503, and c took over
        # With no other node to go to, the 503 is the answer.
        nodes["c"].status = 503
        routed = await fleet.send(
            "llama3.2:latest", None, "x", "/api/chat", body("llama3.2:latest")
        )
        assert routed.reply.status == 503
        routed.finish()
    finally:
        await fleet.close()


async def test_an_open_breaker_takes_a_node_out_of_the_catalogue_and_the_routing(
    nodes: dict[str, Node], inflight: Callable[[], InFlightStore]
) -> None:
    fleet = await fleet_of(specs(nodes), inflight())
    try:
        breaker = fleet.backends["c"].upstream.breaker
        breaker.failure()
        breaker.failure()
        assert breaker.state is BreakerState.OPEN
        assert "all-minilm:latest" not in fleet.require().names
        with pytest.raises(UpstreamUnavailable) as raised:
            await fleet.send(
                "all-minilm:latest", None, "r", "/api/embed", body("all-minilm:latest")
            )
        assert raised.value.retry_after_ms is not None
        assert 1000 <= raised.value.retry_after_ms <= 30_000  # the breaker's time left
        assert {await send(fleet, "llama3.2:latest", f"r{i}") for i in range(10)} <= {"a", "b"}
    finally:
        await fleet.close()


async def test_draining_stops_new_work_and_removing_closes_once_idle(
    nodes: dict[str, Node], inflight: Callable[[], InFlightStore]
) -> None:
    fleet = await fleet_of(specs(nodes), inflight())
    try:
        nodes["c"].hold = asyncio.Event()
        running = asyncio.create_task(
            fleet.send("all-minilm:latest", None, "r", "/api/embed", body("all-minilm:latest"))
        )
        await asyncio.wait_for(nodes["c"].arrived.wait(), 2)
        await fleet.apply(specs(nodes, c=BackendStatus.DRAINING))
        assert "all-minilm:latest" not in fleet.require().names
        with pytest.raises(UpstreamUnavailable):
            await fleet.send(
                "all-minilm:latest", None, "r2", "/api/embed", body("all-minilm:latest")
            )
        removed = fleet.backends["c"]
        await fleet.apply(specs({"a": nodes["a"], "b": nodes["b"]}))
        assert "c" not in fleet.backends
        nodes["c"].hold.set()
        routed = await running
        assert (await routed.reply.read()).startswith(b"{")  # the request it had finished
        assert not removed.idle.is_set()
        routed.finish()
        await asyncio.wait_for(removed.idle.wait(), 1)
        await asyncio.sleep(0.05)
        assert removed.upstream._session is None  # closed once idle
    finally:
        await fleet.close()


async def test_a_full_warm_node_spills_over_when_waiting_costs_more_than_a_load(
    nodes: dict[str, Node], inflight: Callable[[], InFlightStore]
) -> None:
    nodes["a"].loaded["llama3.2:latest"] = 4096
    nodes["a"].hold = asyncio.Event()
    fleet = await fleet_of(specs({"a": nodes["a"], "b": nodes["b"]}), inflight())
    try:
        # What the gateway has learnt: a request holds a's slot 4 s, a load on b takes 1 s.
        fleet.backends["a"].estimate("llama3.2:latest").busy.observe(4.0)
        fleet.backends["b"].estimate("llama3.2:latest").load.observe(1.0)
        first = asyncio.create_task(send(fleet, "llama3.2:latest", "r1"))
        await asyncio.wait_for(nodes["a"].arrived.wait(), 2)
        # a is full: waiting 4 s for its slot costs more than 1.5 x the 1 s load on b.
        assert await send(fleet, "llama3.2:latest", "r2") == "b"
        assert fleet.decisions == {("a", "warm"): 1, ("b", "spill"): 1}
        nodes["a"].hold.set()
        assert await first == "a"
        # Were loads slow (30 s), the same request would have waited on a instead.
        fleet.backends["b"].estimates.clear()
        fleet.backends["b"].residents.clear()
        fleet.backends["b"].estimate("llama3.2:latest").load.observe(30.0)
        nodes["a"].hold = asyncio.Event()
        nodes["a"].arrived.clear()
        held = asyncio.create_task(send(fleet, "llama3.2:latest", "r3"))
        await asyncio.wait_for(nodes["a"].arrived.wait(), 2)
        queued = asyncio.create_task(send(fleet, "llama3.2:latest", "r4"))
        await asyncio.sleep(0.2)
        nodes["a"].hold.set()
        assert [await held, await queued] == ["a", "a"]
        assert fleet.decisions[("a", "queue")] == 1
    finally:
        await fleet.close()


async def test_a_replica_that_stops_sharing_stops_counting() -> None:
    client = aioredis.Redis.from_url(services.redis_url(FLEET_DB))
    await client.flushdb()
    now = [1_000_000]
    first, second = (RedisInFlight(client, name, clock=lambda: now[0]) for name in "ab")
    try:
        first.acquire("gpu-1", "r1", 30_000)
        first.acquire("gpu-1", "r2", 30_000)
        first.mark_loading("gpu-2", "llama3.2:latest", 60_000)
        await first.sync()
        await second.sync()
        assert second.read(["gpu-1", "gpu-2"], "llama3.2:latest") == [(2, False), (0, True)]
        first.release("gpu-1", "r1")
        first.release("gpu-1", "r1")  # twice: counted once
        await first.sync()
        await second.sync()
        assert second.read(["gpu-1"], "qwen2.5:7b") == [(1, False)]
        now[0] += SHARE_TTL_MS + 1  # the first replica died: its share expires
        await second.sync()
        assert second.read(["gpu-1", "gpu-2"], "llama3.2:latest") == [(0, False), (0, False)]
        assert await client.hlen(SHARED_KEY) == 0  # and is forgotten
    finally:
        await client.aclose()


async def test_the_load_time_is_learnt_from_the_final_frame(
    nodes: dict[str, Node], inflight: Callable[[], InFlightStore]
) -> None:
    nodes["c"].load_ns = 3_200_000_000
    fleet = await fleet_of(specs({"c": nodes["c"]}), inflight())
    try:
        estimate = fleet.backends["c"].estimate("all-minilm:latest")
        assert not estimate.load.measured  # the 20 s prior
        assert await send(fleet, "all-minilm:latest", "r1") == "c"
        assert estimate.load.value == pytest.approx(3.2)
        nodes["c"].load_ns = 2_000_000  # warm now: a few milliseconds are not a load
        assert await send(fleet, "all-minilm:latest", "r2") == "c"
        assert estimate.load.value == pytest.approx(3.2)
    finally:
        await fleet.close()
