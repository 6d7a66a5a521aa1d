"""The mock as an Ollama node (Ollama's `server/sched.go`): cold loads and `load_duration`,
residency in `/api/ps` and `keep_alive`, `parallel` slots and their queue, eviction beyond
`max_loaded_models`, reloads on a new `num_ctx`, the per-model counters, and several
nodes served by one process.

One process serves three nodes for the module (`THREE_NODE_CATALOGUES`); node 0 starts
with `--parallel 2 --max-loaded-models 2`, the others with `--parallel 1`, and every
node loads `qwen2.5:7b` in 0.5 s. Each test starts from a reset of all three.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import ollama
import pytest

from nz_mock_ollama.catalogue import model_from_name
from nz_mock_ollama.cli import parse_args
from nz_mock_ollama.node import NodeSettings
from nz_mock_ollama.slots import Slots
from tests.processes import THREE_NODE_CATALOGUES, run_mock_nodes

QWEN_LOAD_S = 0.5
SECOND_NS = 1_000_000_000
CHAT = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Node:
    """One node of the module's mock process, with the clients that reach it."""

    url: str
    http: httpx.Client
    client: ollama.Client

    def stats(self) -> dict[str, dict[str, int]]:
        """`/_mock/stats`' per-model counters."""
        stats: dict[str, dict[str, int]] = self.http.get("/_mock/stats").json()["models"]
        return stats

    def running(self) -> list[str]:
        """The models `/api/ps` lists, longest remaining first."""
        return [m["model"] for m in self.http.get("/api/ps").json()["models"]]

    def configure(self, **changes: object) -> dict[str, Any]:
        reply = self.http.post("/_mock/node", json=changes)
        reply.raise_for_status()
        body: dict[str, Any] = reply.json()
        return body

    def pace(self, token_rate: float) -> None:
        """Make each answer of 8 tokens take 8 / token_rate seconds."""
        self.http.post("/_mock/config", json={"token_rate": token_rate}).raise_for_status()


@pytest.fixture(scope="module")
def _nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    with (
        run_mock_nodes(
            tmp_path_factory.mktemp("nodes"),
            "--token-rate", "0",
            "--response-tokens", "8",
            "--parallel", "2", "--parallel", "1", "--parallel", "1",
            "--max-loaded-models", "2", "--max-loaded-models", "0", "--max-loaded-models", "0",
            "--load-delay", f"qwen2.5:7b={QWEN_LOAD_S}",
        ) as mock,
        ExitStack() as stack,
    ):  # fmt: skip
        # Clients are shared: building one loads a TLS context (~80 ms), too slow per test.
        yield [
            Node(
                url,
                stack.enter_context(httpx.Client(base_url=url, timeout=10)),
                stack.enter_context(ollama.Client(host=url, timeout=10)),
            )
            for url in mock.urls
        ]


@pytest.fixture
def nodes(_nodes: list[Node]) -> list[Node]:
    """The three nodes, each reset to its startup state."""
    for node in _nodes:
        node.http.post("/_mock/reset").raise_for_status()
    return _nodes


@pytest.fixture(scope="module")
async def _async_clients(_nodes: list[Node]) -> AsyncIterator[list[ollama.AsyncClient]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(ollama.AsyncClient(host=node.url, timeout=10))
            for node in _nodes
        ]


@pytest.fixture
def async_clients(
    nodes: list[Node], _async_clients: list[ollama.AsyncClient]
) -> list[ollama.AsyncClient]:
    """The async ollama-python client of each (freshly reset) node."""
    return _async_clients


# -- cold loads and load_duration -------------------------------------------------------


def test_a_cold_load_takes_its_delay_and_reports_it_as_load_duration(nodes: list[Node]) -> None:
    client = nodes[0].client
    started = time.monotonic()
    cold = client.generate(model="qwen2.5:7b", prompt="hi")
    assert time.monotonic() - started >= QWEN_LOAD_S
    assert QWEN_LOAD_S * SECOND_NS <= (cold.load_duration or 0) < (QWEN_LOAD_S + 0.4) * SECOND_NS
    assert (cold.total_duration or 0) >= (cold.load_duration or 0)

    warm = client.generate(model="qwen2.5:7b", prompt="hi again")
    assert (warm.load_duration or 0) < 0.1 * SECOND_NS
    # A model without a delay loads at once; the stream's final frame reports it too.
    final = list(client.chat(model="llama3.2", messages=CHAT, stream=True))[-1]
    assert final.done
    assert 0 < (final.load_duration or 0) < 0.1 * SECOND_NS

    stats = nodes[0].stats()
    assert stats["qwen2.5:7b"]["loads"] == 1
    assert stats["qwen2.5:7b"]["requests"] == 2
    assert stats["llama3.2:latest"]["loads"] == 1


async def test_requests_arriving_during_a_load_wait_for_that_load(
    nodes: list[Node], async_clients: list[ollama.AsyncClient]
) -> None:
    client = async_clients[2]
    replies = await asyncio.gather(
        *(client.generate(model="qwen2.5:7b", prompt=f"p{i}") for i in range(3))
    )
    # All waited for the one load (the later ones arrived a little into it).
    waits = sorted(reply.load_duration or 0 for reply in replies)
    assert waits[-1] >= QWEN_LOAD_S * SECOND_NS
    assert waits[0] >= 0.2 * SECOND_NS
    stats = nodes[2].stats()["qwen2.5:7b"]
    assert (stats["loads"], stats["requests"], stats["max_in_flight"]) == (1, 3, 3)


def test_a_client_leaving_during_a_cold_load_abandons_it(nodes: list[Node]) -> None:
    node = nodes[2]
    body = {"model": "qwen2.5:7b", "prompt": "hi", "stream": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(node.url + "/api/generate", json=body, timeout=0.15)
    deadline = time.monotonic() + 2
    while node.stats()["qwen2.5:7b"]["unloads"] == 0:
        assert time.monotonic() < deadline, "the abandoned load was never unloaded"
        time.sleep(0.02)
    assert node.running() == []
    again = httpx.post(node.url + "/api/generate", json=body, timeout=5).json()
    assert again["load_duration"] >= (QWEN_LOAD_S - 0.05) * SECOND_NS
    assert node.stats()["qwen2.5:7b"]["loads"] == 2


# -- residency: /api/ps and keep_alive --------------------------------------------------


def test_ps_reports_loaded_models_until_keep_alive_runs_out(nodes: list[Node]) -> None:
    node, client = nodes[1], nodes[1].client
    client.chat(model="llama3.2", messages=CHAT, keep_alive="2s")
    client.generate(model="mistral", prompt="hi", keep_alive=0.6)  # a number is seconds
    [longest, shortest] = client.ps().models
    now = datetime.now(UTC)
    assert longest.model == longest.name == "llama3.2:latest"
    assert shortest.model == "mistral:latest"
    assert longest.expires_at is not None
    assert shortest.expires_at is not None
    assert timedelta(0) < longest.expires_at - now <= timedelta(seconds=2)
    assert timedelta(0) < shortest.expires_at - now <= timedelta(seconds=0.6)
    tags = {m.model: m for m in client.list().models}
    assert longest.digest == tags["llama3.2:latest"].digest
    assert longest.size == longest.size_vram == tags["llama3.2:latest"].size
    assert longest.details is not None
    assert longest.details.family == "llama"
    assert longest.context_length == 4096

    time.sleep(0.7)
    assert node.running() == ["llama3.2:latest"]
    time.sleep((longest.expires_at - datetime.now(UTC)).total_seconds() + 0.05)
    assert node.running() == []
    stats = node.stats()
    assert stats["llama3.2:latest"]["unloads"] == stats["mistral:latest"]["unloads"] == 1


def test_keep_alive_forever_and_absent(nodes: list[Node]) -> None:
    client = nodes[1].client
    client.generate(model="mistral", prompt="hi", keep_alive=-1)
    client.generate(model="llama3.2", prompt="hi", keep_alive="1h")
    # A request without keep_alive leaves the runner's own, as Ollama does.
    client.generate(model="llama3.2", prompt="again")
    expiry = {m.model: m.expires_at for m in client.ps().models}
    now = datetime.now(UTC)
    assert expiry["mistral:latest"] is not None
    assert expiry["llama3.2:latest"] is not None
    assert expiry["mistral:latest"] - now > timedelta(days=365 * 50)
    assert timedelta(minutes=59) < expiry["llama3.2:latest"] - now <= timedelta(hours=1)
    client.generate(model="llama3.2", prompt="shorter", keep_alive="2m")
    [llama] = [m for m in client.ps().models if m.model == "llama3.2:latest"]
    assert llama.expires_at is not None
    assert llama.expires_at - datetime.now(UTC) <= timedelta(minutes=2)


def test_keep_alive_zero_unloads_once_the_request_is_done(nodes: list[Node]) -> None:
    node = nodes[1]
    node.pace(16)  # 8 tokens: half a second
    with (
        httpx.Client(base_url=node.url) as http,
        http.stream(
            "POST", "/api/generate", json={"model": "llama3.2", "prompt": "hi", "keep_alive": 0}
        ) as reply,
    ):
        lines = reply.iter_lines()
        next(lines)
        assert node.running() == ["llama3.2:latest"]  # in use: still loaded
        rest = list(lines)
    assert '"done":true' in rest[-1]
    assert node.running() == []
    stats = node.stats()["llama3.2:latest"]
    assert (stats["loads"], stats["unloads"]) == (1, 1)


async def test_an_unload_request_waits_for_the_requests_in_flight(
    nodes: list[Node], async_clients: list[ollama.AsyncClient]
) -> None:
    node, client = nodes[1], async_clients[1]
    node.pace(16)
    body = {"model": "llama3.2", "messages": CHAT}
    async with (
        httpx.AsyncClient(base_url=node.url, timeout=10) as http,
        http.stream("POST", "/api/chat", json=body) as busy,
    ):
        generating = busy.aiter_lines()
        await anext(generating)
        unload = await client.chat(model="llama3.2", messages=[], keep_alive=0)
        assert unload.done_reason == "unload"
        assert node.running() == ["llama3.2:latest"]
        assert '"done":true' in [line async for line in generating][-1]
    assert node.running() == []
    assert node.stats()["llama3.2:latest"]["unloads"] == 1


# -- parallel slots ---------------------------------------------------------------------


async def test_parallel_2_makes_a_third_request_wait_for_a_slot(
    nodes: list[Node], async_clients: list[ollama.AsyncClient]
) -> None:
    node, client = nodes[0], async_clients[0]  # --parallel 2
    node.pace(16)  # each answer: 8 tokens in 0.5 s
    await client.generate(model="llama3.2", prompt="")  # loaded before the clock starts

    async def timed(i: int) -> tuple[float, ollama.ChatResponse]:
        started = time.monotonic()
        reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": f"{i}"}])
        return time.monotonic() - started, reply

    results = sorted(await asyncio.gather(*(timed(i) for i in range(3))), key=lambda r: r[0])
    (_, _), (second, _), (third, last) = results
    assert third - second >= 0.35
    assert third >= 0.95, f"the third request did not wait for a slot: {third:.2f}s"
    # The wait is in total_duration, not load_duration nor eval_duration (as in Ollama).
    assert (last.total_duration or 0) >= 0.95 * SECOND_NS
    assert (last.eval_duration or 0) < 0.9 * SECOND_NS
    assert (last.load_duration or 0) < 0.1 * SECOND_NS
    stats = node.stats()["llama3.2:latest"]
    assert stats["max_in_flight"] == 3
    assert stats["max_generating"] == 2
    assert (stats["in_flight"], stats["generating"]) == (0, 0)


async def test_a_queued_stream_sends_nothing_until_it_has_a_slot(nodes: list[Node]) -> None:
    node = nodes[1]  # --parallel 1
    node.pace(16)
    body = {"model": "mistral", "messages": CHAT}
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        await http.post("/api/chat", json={"model": "mistral", "messages": []})
        async with http.stream("POST", "/api/chat", json=body) as first:
            generating = first.aiter_lines()  # kept: dropping it would close the stream
            await anext(generating)
            started = time.monotonic()
            async with http.stream("POST", "/api/chat", json=body) as queued:
                headers_after = time.monotonic() - started
                lines = [line async for line in queued.aiter_lines()]
            assert [line async for line in generating][-1].startswith('{"model"')
    assert headers_after >= 0.3, f"headers came {headers_after:.2f}s in, before a free slot"
    assert '"done":true' in lines[-1]
    assert node.stats()["mistral:latest"]["max_generating"] == 1


async def test_parallel_1_serves_waiting_requests_in_arrival_order(
    nodes: list[Node], async_clients: list[ollama.AsyncClient]
) -> None:
    node, client = nodes[2], async_clients[2]  # --parallel 1
    node.pace(20)  # 0.4 s per answer
    await client.generate(model="mistral", prompt="")
    finished: list[int] = []

    async def ask(i: int) -> None:
        await asyncio.sleep(i * 0.08)  # arrive in order 0, 1, 2, 3
        await client.generate(model="mistral", prompt=f"{i}")
        finished.append(i)

    await asyncio.gather(*(ask(i) for i in range(4)))
    assert finished == [0, 1, 2, 3]
    stats = node.stats()["mistral:latest"]
    assert (stats["max_in_flight"], stats["max_generating"]) == (4, 1)


async def test_embedding_models_take_one_slot(
    nodes: list[Node], async_clients: list[ollama.AsyncClient]
) -> None:
    node, client = nodes[0], async_clients[0]
    node.configure(parallel=4)
    await asyncio.gather(*(client.embed(model="all-minilm", input=f"x{i}") for i in range(4)))
    assert node.stats()["all-minilm:latest"]["max_generating"] == 1


# -- eviction and reloads ---------------------------------------------------------------


def test_loading_beyond_max_loaded_models_evicts_the_shortest_keep_alive(nodes: list[Node]) -> None:
    node, client = nodes[0], nodes[0].client  # --max-loaded-models 2
    client.generate(model="llama3.2", prompt="hi", keep_alive="10m")
    client.embed(model="all-minilm", input="hi", keep_alive="1m")
    client.generate(model="qwen2.5:7b", prompt="hi")  # 5m
    assert sorted(node.running()) == ["llama3.2:latest", "qwen2.5:7b"]
    stats = node.stats()
    assert stats["all-minilm:latest"]["unloads"] == 1
    assert stats["llama3.2:latest"]["unloads"] == stats["qwen2.5:7b"]["unloads"] == 0


def test_with_equal_keep_alive_eviction_follows_the_model_file(nodes: list[Node]) -> None:
    # Ollama breaks the tie by the model's blob path, i.e. its digest.
    node, client = nodes[0], nodes[0].client
    client.generate(model="llama3.2", prompt="hi")
    client.embed(model="all-minilm", input="hi")
    digests = {m.model: m.digest or "" for m in client.list().models}
    expected_victim = min(["llama3.2:latest", "all-minilm:latest"], key=digests.__getitem__)
    client.generate(model="qwen2.5:7b", prompt="hi")
    assert expected_victim not in node.running()
    assert node.stats()[expected_victim]["unloads"] == 1


async def test_eviction_waits_while_every_loaded_model_is_busy(
    nodes: list[Node], async_clients: list[ollama.AsyncClient]
) -> None:
    node, client = nodes[1], async_clients[1]
    node.configure(max_loaded_models=1)
    node.pace(16)
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        body = {"model": "llama3.2", "messages": CHAT}
        async with http.stream("POST", "/api/chat", json=body) as busy:
            generating = busy.aiter_lines()
            await anext(generating)
            started = time.monotonic()
            other = await client.generate(model="mistral", prompt="hi")
            waited = time.monotonic() - started
            assert '"done":true' in [line async for line in generating][-1]
    assert waited >= 0.3, f"mistral loaded after {waited:.2f}s while llama3.2 was busy"
    assert (other.load_duration or 0) >= 0.3 * SECOND_NS
    assert node.running() == ["mistral:latest"]
    assert node.stats()["llama3.2:latest"]["unloads"] == 1


def test_a_new_num_ctx_reloads_the_model(nodes: list[Node]) -> None:
    node, client = nodes[2], nodes[2].client

    def ask(num_ctx: int) -> tuple[int, int]:
        client.generate(model="mistral", prompt="hi", options={"num_ctx": num_ctx})
        [loaded] = client.ps().models
        return loaded.context_length or 0, node.stats()["mistral:latest"]["loads"]

    assert ask(2048) == (2048, 1)
    assert ask(2048) == (2048, 1)
    assert ask(8192) == (8192, 2)
    # Above the model's trained context (32768 for mistral) Ollama caps it, so these two
    # ask for the same runner.
    assert ask(100_000) == (32768, 3)
    assert ask(65_536) == (32768, 3)
    assert node.stats()["mistral:latest"]["unloads"] == 2


# -- several nodes ----------------------------------------------------------------------


def test_three_nodes_have_their_own_catalogues_and_state(nodes: list[Node]) -> None:
    assert len({node.url for node in nodes}) == 3
    for node, catalogue in zip(nodes, THREE_NODE_CATALOGUES, strict=True):
        assert {m.model for m in node.client.list().models} == set(catalogue)
    first, second = nodes[0].client, nodes[1].client
    with pytest.raises(ollama.ResponseError) as missing:
        first.chat(model="mistral", messages=CHAT)
    assert missing.value.status_code == 404
    assert missing.value.error == "model 'mistral' not found"

    first.chat(model="llama3.2", messages=CHAT)
    assert nodes[0].running() == ["llama3.2:latest"]
    assert nodes[1].running() == []
    assert "llama3.2:latest" not in nodes[1].stats()
    second.chat(model="llama3.2", messages=CHAT)
    assert nodes[0].stats()["llama3.2:latest"]["requests"] == 1
    assert nodes[1].stats()["llama3.2:latest"]["requests"] == 1


# -- the control API --------------------------------------------------------------------


def test_node_settings_from_the_command_line_change_at_runtime_and_reset(nodes: list[Node]) -> None:
    node = nodes[0]
    started = {
        "parallel": 2,
        "max_loaded_models": 2,
        "load_delay_s": 0.0,
        "load_delays": {"qwen2.5:7b": QWEN_LOAD_S},
    }
    assert node.http.get("/_mock/node").json() == started
    assert nodes[1].http.get("/_mock/node").json()["parallel"] == 1
    changed = node.configure(load_delays={"Llama3.2": 0.3}, max_loaded_models=0)
    assert changed["load_delays"] == {"llama3.2:latest": 0.3, "qwen2.5:7b": QWEN_LOAD_S}
    assert changed["max_loaded_models"] == 0
    cold = node.client.generate(model="llama3.2", prompt="hi")
    assert (cold.load_duration or 0) >= 0.3 * SECOND_NS
    node.http.post("/_mock/reset").raise_for_status()
    assert node.http.get("/_mock/node").json() == started
    assert node.running() == []
    assert node.stats() == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"parallel": -1}, "parallel must be an integer >= 0"),
        ({"parallel": True}, "parallel must be an integer >= 0"),
        ({"max_loaded_models": 1.5}, "max_loaded_models must be an integer >= 0"),
        ({"load_delay_s": -1}, "load_delay_s must be a number of seconds in [0, 3600)"),
        ({"load_delays": ["llama3.2"]}, "load_delays must map model names to seconds"),
        ({"load_delays": {"llama3.2": "2"}}, "load_delays['llama3.2'] must be a number"),
        ({"slots": 2}, "unknown node keys: slots"),
    ],
)
def test_bad_node_settings_are_refused(
    nodes: list[Node], change: dict[str, object], message: str
) -> None:
    node = nodes[0]
    before = node.http.get("/_mock/node").json()
    refused = node.http.post("/_mock/node", json=change)
    assert refused.status_code == 400
    assert message in refused.json()["error"]
    assert node.http.get("/_mock/node").json() == before


# -- the command line and the pieces ----------------------------------------------------


def test_one_flag_serves_every_node_and_repeated_flags_pair_with_ports() -> None:
    flags = ["--port", "1", "--port", "2", "--models", "a,b", "--models", "c"]
    invocation = parse_args(
        [*flags, "--parallel", "3", "--load-delay", "2", "--load-delay", "Big:70b=9.5"],
        environ={},
    )
    assert [port for port, _ in invocation.nodes] == [1, 2]
    (_, first), (_, second) = invocation.nodes
    assert first.models == ("a", "b")
    assert second.models == ("c",)
    assert first.node == second.node
    assert first.node.parallel == 3
    assert first.node.max_loaded_models == 0
    assert first.node.load_delay(model_from_name("a", 0)) == 2.0
    assert first.node.load_delay(model_from_name("big:70b", 0)) == 9.5
    assert invocation.port == 1  # the first node, for callers that know only one
    assert invocation.config is first


def test_ollama_environment_variables_give_the_defaults() -> None:
    environ = {"OLLAMA_NUM_PARALLEL": "4", "OLLAMA_MAX_LOADED_MODELS": "3"}
    settings = parse_args([], environ=environ).config.node
    assert (settings.parallel, settings.max_loaded_models) == (4, 3)
    flagged = parse_args(["--parallel", "1"], environ=environ).config.node
    assert (flagged.parallel, flagged.max_loaded_models) == (1, 3)
    assert parse_args([], environ={}).config.node == NodeSettings()


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--port", "1", "--port", "2", "--port", "3", "--models", "a", "--models", "b"], {},
         "--models is given 2 times for 3 ports"),
        (["--parallel", "1", "--parallel", "2"], {}, "--parallel is given 2 times for 1 ports"),
        (["--parallel", "-1"], {}, "parallel must be >= 0"),
        (["--load-delay", "llama3.2=soon"], {}, "is not MODEL=SECONDS or SECONDS"),
        (["--load-delay", "=2"], {}, "names no model"),
        (["--load-delay", "-1"], {}, "must be in [0, 3600) seconds"),
        ([], {"OLLAMA_NUM_PARALLEL": "two"}, "OLLAMA_NUM_PARALLEL must be an integer >= 0"),
    ],
)  # fmt: skip
def test_bad_node_flags_exit_with_usage(
    argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, environ=environ)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_busy_port_among_several_is_named() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "nz_mock_ollama", "--port", "0", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_slots_queue_first_come_first_served_and_survive_cancellation() -> None:
    slots = Slots(1)
    order: list[str] = []

    async def use(name: str) -> None:
        async with slots:
            order.append(name)
            await asyncio.sleep(0.01)

    await slots.acquire()
    tasks = {name: asyncio.create_task(use(name)) for name in "abc"}
    await asyncio.sleep(0)
    assert slots.waiting == 3
    tasks["b"].cancel()  # leaves the queue without taking a slot
    slots.release()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert order == ["a", "c"]
    assert (slots.busy, slots.waiting) == (0, 0)
    unlimited = Slots(0)
    for _ in range(5):
        await unlimited.acquire()
    assert unlimited.busy == 5


def test_embedding_runners_get_one_slot_only_when_slots_are_limited() -> None:
    embedder, chatter = model_from_name("all-minilm", 0), model_from_name("llama3.2", 0)
    assert NodeSettings(parallel=4).slots(embedder) == 1
    assert NodeSettings(parallel=4).slots(chatter) == 4
    assert NodeSettings().slots(embedder) == 0  # unlimited stays unlimited
