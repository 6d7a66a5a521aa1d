"""Several Ollama nodes behind real gateway processes (SPEC §4.10, §4.12), in both
storage modes: three mock nodes in one process, each with its own catalogue, slots,
load delay and residency, and a database of the test's own (the table of backends is
the deployment's, so it cannot be the shared session database)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa

from nz_core import admin, backend_admin
from nz_core.database import create_engine
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.migrations import upgrade
from nz_core.schema import audit_log
from nz_core.scopes import Scope
from tests import services
from tests.differential.godecode import GoDecoder
from tests.e2e.conftest import gateway_env
from tests.e2e.test_go_differential import go_decoder
from tests.processes import (
    GatewayProcess,
    MockNodes,
    MockProcess,
    free_port,
    mock_command,
    run_mock_nodes,
    running_gateway,
    stop_process,
    wait_for_url,
)

__all__ = ["go_decoder"]  # the fixture, shared with the differential test

HASHER = KeyHasher(TEST_HASH_PROFILE)
CHAT_SCOPES = frozenset({Scope.CHAT, Scope.EMBEDDINGS})


@dataclass
class Fleet:
    """Gateway replicas in front of three mock nodes, with a database of their own."""

    mode: str
    nodes: MockNodes
    database_url: str
    redis_url: str | None
    log_dir: Path
    stack: ExitStack
    gateways: list[GatewayProcess] = field(default_factory=list)

    def start_gateway(self, **env: str) -> GatewayProcess:
        settings = gateway_env(self.nodes.urls[0], self.database_url, self.redis_url)
        settings["OLLAMA_BASE_URLS"] = ",".join(self.nodes.urls)
        settings["BACKEND_PS_REFRESH_S"] = "0.5"
        settings.update(env)
        gateway = self.stack.enter_context(running_gateway(self.log_dir, settings))
        self.gateways.append(gateway)
        return gateway

    async def key(self, scopes: frozenset[Scope] = CHAT_SCOPES) -> str:
        engine = create_engine(self.database_url)
        try:
            tenant = f"fleet-{time.monotonic_ns()}"
            await admin.create_tenant(engine, tenant, allow_all_models=True)
            return (await admin.create_key(engine, tenant, "k", scopes=scopes, hasher=HASHER)).key
        finally:
            await engine.dispose()

    def node(self, index: int, path: str = "/_mock/stats") -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(self.nodes.urls[index] + path, timeout=5).json()
        return answer

    def model_stats(self, index: int, model: str) -> dict[str, int]:
        found: dict[str, int] = self.node(index)["models"].get(model, {})
        return found

    def received(self, index: int, path: str) -> list[dict[str, Any]]:
        entries = self.node(index, "/_mock/requests")["requests"]
        return [
            json.loads(base64.b64decode(e["body"]))
            for e in entries
            if e["path"] == path and e["body"]
        ]


@pytest.fixture(params=["embedded", "production"])
async def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Fleet]:
    embedded = request.param == "embedded"
    name = None
    if embedded:
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}"
        redis_url = None
    else:
        name = await services.create_database("fleet")
        database_url = services.pg_url(name)
        redis_url = services.redis_url(services.REDIS_DB + 1)
        with redis.Redis.from_url(redis_url) as client:
            client.flushdb()
    await asyncio.to_thread(upgrade, database_url)
    try:
        with ExitStack() as stack:
            nodes = stack.enter_context(
                run_mock_nodes(
                    tmp_path,
                    "--parallel",
                    "1",
                    "--token-rate",
                    "0",
                    "--response-tokens",
                    "8",
                    "--load-delay",
                    "2",
                )
            )
            yield Fleet(request.param, nodes, database_url, redis_url, tmp_path, stack)
    finally:
        if name is not None:
            await services.drop_database(name)


def chat(gateway: GatewayProcess, key: str, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    return httpx.post(
        gateway.url + "/api/chat",
        headers={"Authorization": f"Bearer {key}"},
        json={**body, **extra},
        timeout=30,
    )


def decisions(gateway: GatewayProcess) -> dict[tuple[str, str], float]:
    """The routing decisions so far, from ``/metrics``: {(backend, reason): count}."""
    time.sleep(1.2)  # the per-node figures are published once a second
    text = httpx.get(gateway.url + "/metrics", timeout=5).text
    found: dict[tuple[str, str], float] = {}
    pattern = r'gateway_routing_decisions_total\{backend="([^"]+)",reason="([^"]+)"\} (\S+)'
    for backend, reason, value in re.findall(pattern, text):
        found[(backend, reason)] = float(value)
    return found


async def test_a_model_reaches_only_the_nodes_that_have_it(fleet: Fleet) -> None:
    gateway = fleet.start_gateway()
    key = await fleet.key()
    auth = {"Authorization": f"Bearer {key}"}
    # nomic-embed-text is on the third node only, all-minilm on the first two.
    for _ in range(3):
        answer = httpx.post(
            gateway.url + "/api/embed",
            headers=auth,
            json={"model": "nomic-embed-text", "input": "a sentence"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    assert fleet.model_stats(2, "nomic-embed-text:latest")["requests"] == 3
    for index in (0, 1):
        assert "nomic-embed-text:latest" not in fleet.node(index)["models"]
    refused = chat(gateway, key, "phi3")  # on no node: the usual refusal
    assert refused.status_code == 403
    assert all("phi3:latest" not in fleet.node(index)["models"] for index in range(3))
    listed = httpx.get(gateway.url + "/api/tags", headers=auth, timeout=5).json()
    names = sorted(entry["name"] for entry in listed["models"])
    assert names == sorted(
        {"llama3.2:latest", "qwen2.5:7b", "all-minilm:latest", "mistral:latest"}
        | {"nomic-embed-text:latest"}
    )
    assert not any("127.0.0.1" in json.dumps(entry) for entry in listed["models"])


async def test_warm_first_then_spill_over_only_when_waiting_costs_more(fleet: Fleet) -> None:
    gateway = fleet.start_gateway()
    key = await fleet.key()
    # llama3.2 is on nodes 0 and 1; load it on node 0 only (2 s), straight at the node.
    preload = httpx.post(
        fleet.nodes.urls[0] + "/api/generate", json={"model": "llama3.2"}, timeout=10
    )
    assert preload.status_code == 200
    await asyncio.sleep(1.2)  # the gateway's next /api/ps poll sees it
    for _ in range(50):
        assert chat(gateway, key, "llama3.2").status_code == 200
    warm, cold = (fleet.model_stats(i, "llama3.2:latest") for i in (0, 1))
    print("sequential:", decisions(gateway))
    assert warm["requests"] == 51  # the preload and all fifty
    assert cold.get("loads", 0) == 0
    assert cold.get("requests", 0) == 0
    # A burst of eight on node 0's one slot, each request holding it a quarter second (8
    # tokens at 32/s). The slot time the gateway learnt from the fifty quick answers is
    # a few milliseconds, and node 1's load estimate is the 20 s default (it never
    # loaded there): waiting always looks cheaper than a load, so the burst queues on
    # node 0 (Ollama's queue) and nothing spills. The spill-over itself, with measured
    # estimates, is shown in tests/proxy/test_fleet.py.
    httpx.post(fleet.nodes.urls[0] + "/_mock/config", json={"token_rate": 32}).raise_for_status()
    async with httpx.AsyncClient(timeout=60) as client:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        burst = await asyncio.gather(
            *(
                client.post(
                    gateway.url + "/api/chat",
                    headers={"Authorization": f"Bearer {key}"},
                    json={**body, "stream": False},
                )
                for _ in range(8)
            )
        )
    assert [answer.status_code for answer in burst] == [200] * 8
    after = decisions(gateway)
    print("after the burst:", after)
    node0, node1 = "node-1", "node-2"  # OLLAMA_BASE_URLS' nodes, in order
    assert after.get((node1, "spill"), 0) == 0
    assert after.get((node0, "queue"), 0) >= 1
    assert fleet.model_stats(1, "llama3.2:latest").get("loads", 0) == 0


async def test_drain_and_remove_reach_every_replica_within_a_second(fleet: Fleet) -> None:
    if fleet.mode == "embedded":
        pytest.skip("embedded mode is one process: see the single-replica test")
    first, second = fleet.start_gateway(), fleet.start_gateway()
    key = await fleet.key()
    engine = create_engine(fleet.database_url)
    try:
        for i, url in enumerate(fleet.nodes.urls):
            await backend_admin.add_backend(engine, f"gpu-{i}", url, parallel=1)
        await asyncio.sleep(1.0)
        # qwen2.5:7b is on nodes 0 and 2; drain node 0: every request goes to node 2.
        before = fleet.model_stats(0, "qwen2.5:7b").get("requests", 0)
        await backend_admin.drain_backend(engine, "gpu-0")
        started = time.monotonic()
        await asyncio.sleep(1.0)
        for gateway in (first, second):
            for _ in range(4):
                assert chat(gateway, key, "qwen2.5:7b").status_code == 200
        assert fleet.model_stats(0, "qwen2.5:7b").get("requests", 0) == before
        await backend_admin.remove_backend(engine, "gpu-2")
        await asyncio.sleep(1.0)
        for gateway in (first, second):  # qwen2.5:7b is now on no usable node
            assert chat(gateway, key, "qwen2.5:7b").status_code in (403, 502)
        assert time.monotonic() - started < 10
    finally:
        await engine.dispose()


async def test_a_drained_node_finishes_its_streams(fleet: Fleet) -> None:
    gateway = fleet.start_gateway()
    key = await fleet.key()
    engine = create_engine(fleet.database_url)
    try:
        for i, url in enumerate(fleet.nodes.urls):
            await backend_admin.add_backend(engine, f"gpu-{i}", url, parallel=1)
        await asyncio.sleep(1.5)
        httpx.post(
            fleet.nodes.urls[2] + "/_mock/config", json={"token_rate": 10}
        ).raise_for_status()
        # qwen2.5 is on nodes 0 and 2: with node 0 drained, it streams from node 2.
        await backend_admin.drain_backend(engine, "gpu-0")
        await asyncio.sleep(1.2)
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream(
                "POST",
                gateway.url + "/api/generate",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "qwen2.5:7b", "prompt": "hi", "stream": True},
            ) as streaming,
        ):
            lines = streaming.aiter_lines()
            first = await anext(lines)
            await backend_admin.drain_backend(engine, "gpu-2")  # mid-stream
            rest = [line async for line in lines if line]
        frames = [json.loads(first), *(json.loads(line) for line in rest)]
        assert frames[-1]["done"] is True  # the stream finished on the draining node
        await asyncio.sleep(1.2)
        assert chat(gateway, key, "qwen2.5:7b").status_code in (403, 502)  # no new work
    finally:
        await engine.dispose()


@asynccontextmanager
async def policy(fleet: Fleet, model: str, num_ctx: int | None) -> AsyncIterator[None]:
    engine = create_engine(fleet.database_url)
    try:
        await backend_admin.set_model_policy(engine, model, num_ctx=num_ctx)
        yield
    finally:
        await engine.dispose()


async def test_keep_alive_and_num_ctx_follow_the_residency_policy(
    fleet: Fleet, go_decoder: GoDecoder
) -> None:
    gateway = fleet.start_gateway()
    tenant_key = await fleet.key()
    operator_key = await fleet.key(CHAT_SCOPES | {Scope.RESIDENCY})
    async with policy(fleet, "mistral", 4096):
        await asyncio.sleep(1.5)  # the policy reaches the gateway
        for keep_alive in (-1, "999h", "10s", 600):
            assert chat(gateway, tenant_key, "mistral", keep_alive=keep_alive).status_code == 200
        unload = chat(gateway, tenant_key, "mistral", keep_alive=0)
        assert unload.status_code == 403
        assert "residency" in unload.text
        for num_ctx in (2048, 8192, 131072):
            answer = chat(gateway, tenant_key, "mistral", options={"num_ctx": num_ctx})
            assert answer.status_code == 200
        assert chat(gateway, operator_key, "mistral", keep_alive=0).status_code == 200
    sent = [
        entry
        for index in (1, 2)
        for entry in fleet.node(index, "/_mock/requests")["requests"]
        if entry["path"] == "/api/chat" and b"mistral" in base64.b64decode(entry["body"])
    ]
    assert len(sent) == 8
    # What Ollama reads from each forwarded body, read by Go's own decoder.
    readings = [go_decoder.read("/api/chat", base64.b64decode(e["body"])) for e in sent]
    assert all(reading.error is None for reading in readings)
    keep_alive_s = sorted(
        reading.keep_alive_ns // 10**9 for reading in readings if reading.keep_alive_ns is not None
    )
    # -1 and 999h at the maximum, 10 s at the minimum, 600 s as sent, and the
    # operator's unload (the residency scope) as sent: nothing pins a model forever. The
    # three num_ctx requests sent no keep_alive and got none.
    assert keep_alive_s == [0, 60, 600, 1800, 1800]
    assert {reading.num_ctx for reading in readings} == {4096}  # pinned, always


@contextmanager
def node_process(log_dir: Path, port: int, models: str, *args: str) -> Iterator[MockProcess]:
    """One mock node on a fixed port, so that it can come back where it was."""
    log = log_dir / f"node-{port}-{time.monotonic_ns()}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            mock_command("--port", str(port), "--models", models, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        yield MockProcess(wait_for_url(process, log), process, log)
    finally:
        stop_process(process)


def breakers(gateway: GatewayProcess) -> dict[str, float]:
    time.sleep(1.2)  # the per-node figures are published once a second
    text = httpx.get(gateway.url + "/metrics", timeout=5).text
    pattern = r'gateway_circuit_breaker_state\{backend="([^"]+)"\} (\S+)'
    return {name: float(value) for name, value in re.findall(pattern, text)}


async def audited(database_url: str, key: str) -> list[tuple[int, str | None]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(audit_log.c.status, audit_log.c.backend).where(
                    audit_log.c.key_prefix == key[:12]
                )
            )
            return [(row.status, row.backend) for row in rows]
    finally:
        await engine.dispose()


async def test_a_node_killed_mid_stream_is_routed_around_and_comes_back(
    fleet: Fleet, tmp_path: Path
) -> None:
    # Three nodes of their own processes: llama3.2 on the first two, mistral only on the
    # second (the one that dies), qwen on the third.
    ports = [free_port() for _ in range(3)]
    catalogues = ["llama3.2:latest", "llama3.2:latest,mistral:latest", "qwen2.5:7b"]
    with ExitStack() as nodes:
        # The second node streams slowly (24 tokens at 5/s), so it dies mid-stream.
        pace = [("--token-rate", "0"), ("--token-rate", "5"), ("--token-rate", "0")]
        started = [
            nodes.enter_context(node_process(tmp_path, port, models, *args))
            for port, models, args in zip(ports, catalogues, pace, strict=True)
        ]
        urls = [node.url for node in started]
        gateway = fleet.start_gateway(
            OLLAMA_BASE_URLS=",".join(urls),
            CIRCUIT_BREAKER_FAILURES="1",
            CIRCUIT_BREAKER_RESET_S="3",
        )
        key = await fleet.key()
        auth = {"Authorization": f"Bearer {key}"}
        # llama3.2 warm on the second node only: the streams go there.
        httpx.post(urls[1] + "/api/generate", json={"model": "llama3.2"}, timeout=10)
        await asyncio.sleep(1.2)
        sent = 0
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "llama3.2", "prompt": "hi", "stream": True}
            async with client.stream(
                "POST", gateway.url + "/api/generate", headers=auth, json=body
            ) as streaming:
                sent += 1
                lines = streaming.aiter_lines()
                assert json.loads(await anext(lines))["done"] is False
                started[1].process.kill()  # SIGKILL: the node is gone mid-stream
                started[1].process.wait()
                rest = [json.loads(line) async for line in lines if line]
        assert "error" in rest[-1]  # the stream ended with the error frame
        for _ in range(6):  # new requests go to the first node
            assert chat(gateway, key, "llama3.2").status_code == 200
            sent += 1
        await asyncio.sleep(0.5)
        states = breakers(gateway)
        print("breakers while the node is down:", states)
        assert states == {"node-1": 0, "node-2": 1, "node-3": 0}  # open alone
        outage = chat(gateway, key, "mistral")  # only on the dead node: not offered
        sent += 1
        assert outage.status_code in (403, 502)
        # The node comes back where it was; after the breaker's reset the next request
        # for its model is the half-open probe, and traffic returns.
        nodes.enter_context(node_process(tmp_path, ports[1], catalogues[1], *pace[1]))
        deadline = time.monotonic() + 15
        back = None
        while time.monotonic() < deadline:
            back = chat(gateway, key, "mistral")
            sent += 1
            if back.status_code == 200:
                break
            await asyncio.sleep(0.5)
        assert back is not None
        assert back.status_code == 200
        assert breakers(gateway)["node-2"] == 0
    await asyncio.sleep(1.0)  # the audit flushes every 0.2 s
    rows = await audited(fleet.database_url, key)
    assert len(rows) == sent  # every request on the books, the broken stream included
    assert {backend for status, backend in rows if status == 200} <= {"node-1", "node-2"}
    assert rows.count((200, "node-2")) >= 1  # the probe that brought it back
