"""The benchmark run: every system, one after another, on this machine, in one go.

Phase 1, throughput (backend: nginx with canned bodies). For each system, a warm-up,
then wrk at each concurrency level for non-streamed chat, with the system's CPU read
from ``/proc`` around every level; for neuronetz production also Redis
``INFO commandstats``, PostgreSQL's transaction count and the argon2 counter.

Phase 2, streaming (backend: the mock Ollama at a fixed token rate). Time to first
token and the gap between chunks at concurrency 1, then 1,000 concurrent streams with
the worker's RSS sampled while they run.

The raw figures go to JSON; ``report.py`` derives the table and the plot from them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.benchmarks import peer, procstat, streams
from tests.benchmarks.loadgen import run_wrk
from tests.benchmarks.stub import nginx_stub
from tests.benchmarks.systems import Neuronetz, floor_rig, neuronetz, pg_transactions
from tests.processes import run_mock

__all__ = ["Plan", "load", "machine", "run"]

PROMPT = [{"role": "user", "content": "Say hello in one short sentence."}]
NATIVE_PATH = "/api/chat"
OPENAI_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Plan:
    """How long and how wide to measure."""

    levels: tuple[int, ...] = (1, 4, 16, 32, 64, 128, 256)
    duration_s: int = 5
    warmup_s: int = 2
    token_rate: float = 50.0
    stream_tokens: int = 20
    timed_streams: int = 40
    held_streams: int = 1000
    held_token_rate: float = 2.0
    held_tokens: int = 30
    peer: bool = True


@dataclass(frozen=True)
class Surface:
    """One way of asking one system for a chat: where, with what, charged to whom."""

    system: str
    label: str
    base: str
    path: str
    headers: dict[str, str]
    root_pid: int

    def body(self, *, stream: bool) -> bytes:
        request: dict[str, Any] = {"model": "llama3.2", "messages": PROMPT, "stream": stream}
        return json.dumps(request).encode()


def _native(system: str, label: str, base: str, pid: int, key: str | None) -> Surface:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return Surface(system, label, base, NATIVE_PATH, headers, pid)


def _openai(system: str, label: str, base: str, pid: int, key: str) -> Surface:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    return Surface(system, label, base, OPENAI_PATH, headers, pid)


def _neuronetz_surfaces(gateway: Neuronetz) -> list[Surface]:
    name = f"neuronetz-{gateway.mode}"
    return [
        _native(
            f"{name}", f"neuronetz {gateway.mode} (native)", gateway.url, gateway.pid, gateway.key
        ),
        _openai(
            f"{name}-openai",
            f"neuronetz {gateway.mode} (OpenAI)",
            gateway.url,
            gateway.pid,
            gateway.key,
        ),
    ]


# --- phase 1: throughput --------------------------------------------------------------


def _level(surface: Surface, connections: int, duration_s: float) -> dict[str, Any]:
    clock = procstat.CpuClock(surface.root_pid)
    clock.start()
    result = run_wrk(
        surface.base + surface.path,
        connections=connections,
        duration_s=duration_s,
        body=surface.body(stream=False),
        headers=surface.headers,
    )
    cpu_s = clock.stop()
    return {**asdict(result), "rps": result.rps, "cpu_s": cpu_s}


def warm(surface: Surface, plan: Plan) -> None:
    """Fill the key cache and the connection pools before anything is measured."""
    run_wrk(
        surface.base + surface.path,
        connections=16,
        duration_s=plan.warmup_s,
        body=surface.body(stream=False),
        headers=surface.headers,
    )


def sweep(surface: Surface, plan: Plan, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every concurrency level, after a warm-up."""
    warm(surface, plan)
    levels = []
    for connections in plan.levels:
        level = _level(surface, connections, plan.duration_s)
        log(
            f"  {surface.label:32} c={connections:<4} {level['rps']:9.0f} rps"
            f"  p50 {level['p50_us'] / 1000:8.3f} ms  p99 {level['p99_us'] / 1000:8.3f} ms"
            f"  errors {level['errors'] + level['non_2xx']}"
        )
        levels.append(level)
    return levels


def _metric_total(url: str, name: str) -> float:
    """The sum of every series of the gateway's metric ``name`` (0 when it has none)."""
    text = httpx.get(url + "/metrics", timeout=5).text
    pattern = rf"^{re.escape(name)}(?:\{{.*\}})? (\S+)$"
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


def _commandstats(redis_url: str) -> dict[str, int]:
    with redis.Redis.from_url(redis_url) as client:
        stats: dict[str, dict[str, Any]] = client.info("commandstats")  # type: ignore[assignment]
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


@dataclass
class StateCounters:
    """What the stores and argon2 saw: read before and after a sweep."""

    gateway: Neuronetz
    redis: dict[str, int] | None = None
    db_transactions: int | None = None
    verifications: float = 0.0

    def read(self) -> StateCounters:
        copy = StateCounters(self.gateway)
        if self.gateway.redis_url:
            copy.redis = _commandstats(self.gateway.redis_url)
        if self.gateway.database:
            # PostgreSQL publishes backends' counts within a second or so.
            time.sleep(1.5)
            copy.db_transactions = asyncio.run(pg_transactions(self.gateway.database))
        copy.verifications = _metric_total(self.gateway.url, "gateway_key_verifications_total")
        return copy


def state_figures(before: StateCounters, after: StateCounters, requests: int) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "requests": requests,
        "argon2_verifications": after.verifications - before.verifications,
    }
    if before.redis is not None and after.redis is not None:
        commands = {
            name: calls - before.redis.get(name, 0)
            for name, calls in after.redis.items()
            if calls - before.redis.get(name, 0) and name != "info"
        }
        figures["redis_commands"] = commands
        figures["redis_calls"] = sum(commands.values())
    if before.db_transactions is not None and after.db_transactions is not None:
        figures["db_transactions"] = after.db_transactions - before.db_transactions
    return figures


def _throughput_neuronetz(
    mode: str, backend: str, scratch: Path, plan: Plan, log: Callable[[str], None]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with neuronetz(mode, backend, scratch) as gateway:
        for surface in _neuronetz_surfaces(gateway):
            warm(surface, plan)
            before = StateCounters(gateway).read()
            levels = sweep(surface, plan, log)
            after = StateCounters(gateway).read()
            requests = sum(level["requests"] for level in levels)
            state = state_figures(before, after, requests)
            if gateway.redis_url:
                state["round_trips"] = round_trips(surface, gateway.redis_url, plan)
                log(f"  {surface.label:32} Redis round trips: {state['round_trips']}")
            out[surface.system] = {
                "label": surface.label,
                "surface": surface.path,
                "levels": levels,
                "state": state,
            }
    return out


def round_trips(surface: Surface, redis_url: str, plan: Plan) -> dict[str, Any]:
    """Commands the gateway sent to Redis per request, counted with ``MONITOR``.

    ``INFO commandstats`` also counts the commands Lua scripts run inside Redis;
    MONITOR marks those ``[… lua]``, so the client's own commands (each one round
    trip) can be told apart. A separate, short run: MONITOR slows Redis down.
    """
    with tempfile.NamedTemporaryFile(prefix="nz-monitor-", suffix=".log") as sink:
        monitor = subprocess.Popen(
            ["redis-cli", "-u", redis_url, "monitor"], stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 10
            while b"OK" not in Path(sink.name).read_bytes():
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-cli monitor did not start")
                time.sleep(0.02)
            before = _metric_total(surface.base, "gateway_requests_total")
            run_wrk(
                surface.base + surface.path,
                connections=16,
                duration_s=plan.warmup_s,
                body=surface.body(stream=False),
                headers=surface.headers,
            )
            time.sleep(0.2)  # settlements of the last requests
            # The gateway's own count, not wrk's: wrk leaves out the requests still in
            # flight when it stops, which the gateway admitted and settled all the same.
            served = round(_metric_total(surface.base, "gateway_requests_total") - before)
        finally:
            monitor.terminate()
            monitor.wait(timeout=10)
        lines = Path(sink.name).read_text(errors="replace").splitlines()
    return count_monitor(lines, served, gateway_scripts())


_MONITOR_LINE = re.compile(
    r'^\d+\.\d+ \[\d+ (?P<source>[^\]]+)\] "(?P<command>[^"]+)"(?: "(?P<first>[^"]*)")?'
)


def gateway_scripts() -> dict[str, str]:
    """The gateway's Lua scripts by SHA-1, as ``EVALSHA`` names them."""
    return {
        hashlib.sha1(script.read_bytes(), usedforsecurity=False).hexdigest(): script.name[:-4]
        for script in files("nz_proxy.admission.stores").iterdir()
        if script.name.endswith(".lua")
    }


def count_monitor(
    lines: list[str], requests: int, scripts: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Client commands (not those Lua ran) per request, by command; an ``EVALSHA`` of a
    script in ``scripts`` is counted under ``evalsha:<name>``."""
    commands: dict[str, int] = {}
    for line in lines:
        found = _MONITOR_LINE.match(line)
        if found is None or found["source"] == "lua":
            continue
        name = found["command"].lower()
        if name == "evalsha" and scripts and found["first"] in scripts:
            name = f"evalsha:{scripts[found['first']]}"
        commands[name] = commands.get(name, 0) + 1
    total = sum(commands.values())
    return {
        "requests": requests,
        "commands": commands,
        "per_request": total / requests if requests else None,
    }


def throughput(
    scratch: Path, plan: Plan, venv: Path | None, log: Callable[[str], None]
) -> dict[str, Any]:
    systems: dict[str, Any] = {}

    def record(surface: Surface, **extra: Any) -> None:
        systems[surface.system] = {
            "label": surface.label,
            "surface": surface.path,
            "levels": sweep(surface, plan, log),
            **extra,
        }

    with nginx_stub(scratch / "nginx") as (stub, stub_pid):
        log("throughput: direct (nginx stub)")
        record(_native("direct", "direct (no gateway)", stub, stub_pid, None))
        log("throughput: floor rig")
        with floor_rig(stub, scratch) as (url, pid):
            record(_native("floor", "floor rig (bare pass-through)", url, pid, None))
        for mode in ("production", "embedded"):
            log(f"throughput: neuronetz {mode}")
            systems.update(_throughput_neuronetz(mode, stub, scratch, plan, log))
        if venv is not None:
            log("throughput: LiteLLM")
            with peer.litellm_proxy(venv, stub, scratch) as litellm:
                record(
                    _openai(
                        "litellm",
                        f"LiteLLM {litellm.version} (OpenAI)",
                        litellm.url,
                        litellm.pid,
                        peer.MASTER_KEY,
                    ),
                    version=litellm.version,
                )
    return systems


# --- phase 2: streaming ---------------------------------------------------------------


def _workers(root: int) -> list[int]:
    """Worker processes: the root's descendants, or the root when it serves itself."""
    below = procstat.tree(root)[1:]
    return below or [root]


def _stream_figures(
    surface: Surface, plan: Plan, mock_url: str, log: Callable[[str], None]
) -> dict[str, Any]:
    body = surface.body(stream=True)
    url = surface.base + surface.path
    httpx.post(
        mock_url + "/_mock/config",
        json={"token_rate": plan.token_rate, "response_tokens": plan.stream_tokens},
    ).raise_for_status()
    timed = asyncio.run(streams.time_streams(url, body, surface.headers, count=plan.timed_streams))
    figures: dict[str, Any] = {"timed": timed.summary()}
    httpx.post(
        mock_url + "/_mock/config",
        json={"token_rate": plan.held_token_rate, "response_tokens": plan.held_tokens},
    ).raise_for_status()
    workers = _workers(surface.root_pid)
    idle = {pid: procstat.rss_bytes(pid) for pid in workers}
    clock = procstat.CpuClock(surface.root_pid)
    clock.start()
    held = asyncio.run(
        streams.hold_streams(
            url,
            body,
            surface.headers,
            count=plan.held_streams,
            sample_rss=lambda: {pid: procstat.rss_bytes(pid) for pid in workers},
        )
    )
    cpu_s = clock.stop()
    figures["held"] = {
        **asdict(held),
        "idle_rss": idle,
        "cpu_s": cpu_s,
        "peak_rss_per_worker": max(held.peak_rss.values(), default=0),
    }
    summary = figures["timed"]
    log(
        f"  {surface.label:32} ttft p50 {summary['ttft_p50_ms']:7.2f} ms"
        f"  gap p50 {summary['gap_p50_ms']:6.2f} ms  {plan.held_streams} streams:"
        f" {held.completed} ok, peak RSS {figures['held']['peak_rss_per_worker'] / 2**20:.0f} MiB"
    )
    return figures


def streaming(
    scratch: Path, plan: Plan, venv: Path | None, log: Callable[[str], None]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with run_mock(scratch, "--token-rate", str(plan.token_rate)) as mock:
        log("streaming: direct (mock Ollama)")
        out["direct"] = _stream_figures(
            _native("direct", "direct (no gateway)", mock.url, mock.process.pid, None),
            plan,
            mock.url,
            log,
        )
        log("streaming: floor rig")
        with floor_rig(mock.url, scratch) as (url, pid):
            out["floor"] = _stream_figures(
                _native("floor", "floor rig", url, pid, None), plan, mock.url, log
            )
        for mode in ("production", "embedded"):
            log(f"streaming: neuronetz {mode}")
            with neuronetz(mode, mock.url, scratch) as gateway:
                for surface in _neuronetz_surfaces(gateway):
                    out[surface.system] = _stream_figures(surface, plan, mock.url, log)
        if venv is not None:
            log("streaming: LiteLLM")
            with peer.litellm_proxy(venv, mock.url, scratch) as litellm:
                out["litellm"] = _stream_figures(
                    _openai("litellm", "LiteLLM", litellm.url, litellm.pid, peer.MASTER_KEY),
                    plan,
                    mock.url,
                    log,
                )
    return out


# --- the run --------------------------------------------------------------------------


def _version(command: list[str]) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "not found"
    return (completed.stdout + completed.stderr).strip().splitlines()[0]


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "granian": metadata.version("granian"),
        "aiohttp": metadata.version("aiohttp"),
        "litestar": metadata.version("litestar"),
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]),
        "redis": _version(["redis-server", "--version"]),
    }


@contextmanager
def _scratch(keep: bool) -> Iterator[Path]:
    if keep:
        yield Path(tempfile.mkdtemp(prefix="nz-bench-"))
    else:
        with tempfile.TemporaryDirectory(prefix="nz-bench-") as path:
            yield Path(path)


def run(
    plan: Plan, command: str, log: Callable[[str], None], *, keep: bool = False
) -> dict[str, Any]:
    """Measure everything; return the raw results (``report.py`` renders them)."""
    started = datetime.now(UTC)
    with ExitStack() as stack:
        scratch = stack.enter_context(_scratch(keep))
        (scratch / "nginx").mkdir()
        log(f"scratch directory: {scratch}")
        venv: Path | None = None
        if plan.peer:
            log("installing litellm[proxy] into a throwaway venv")
            peer.install_litellm(scratch / "litellm-venv")
            venv = scratch / "litellm-venv"
        systems = throughput(scratch, plan, venv, log)
        streamed = streaming(scratch, plan, venv, log)
    for name, figures in streamed.items():
        systems.setdefault(name, {})["stream"] = figures
    return {
        "date": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started).total_seconds()),
        "command": command,
        "machine": machine(),
        "plan": asdict(plan),
        "systems": systems,
    }


def load(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    return result
