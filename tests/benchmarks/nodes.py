"""``uv run --all-groups python -m tests.benchmarks.nodes``: what routing costs.

The gateway (production mode, one worker) in front of one node, then of three (nginx
with canned bodies, each saying the model is loaded, as busy nodes would), driven by wrk
at the same concurrency; the gateway's CPU per request is read from ``/proc`` for each.
The difference is what choosing among three nodes costs: the routing read of three
nodes' in-flight counts (one pipelined Redis round trip), the rule, and the lease.
SPEC §4.10 asks for at most 0.1 ms of CPU per request.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from statistics import median
from typing import Any

from nz_core.backends import Backend as Spec
from nz_core.routing import route
from tests.benchmarks.run import Plan, _level, _neuronetz_surfaces, warm
from tests.benchmarks.stub import nginx_stub
from tests.benchmarks.systems import neuronetz

CONNECTIONS = 16
ROUNDS = 5


def cpu_per_request(backends: tuple[str, ...], scratch: Path, duration_s: int) -> dict[str, Any]:
    """Median CPU milliseconds per request over ``ROUNDS`` wrk runs."""
    with neuronetz("production", backends[0], scratch, backends) as gateway:
        surface = _neuronetz_surfaces(gateway)[0]  # native /api/chat
        warm(surface, Plan(warmup_s=2))
        runs = [_level(surface, CONNECTIONS, duration_s) for _ in range(ROUNDS)]
    per_request = [run["cpu_s"] * 1000 / run["requests"] for run in runs if run["requests"]]
    return {
        "nodes": len(backends),
        "cpu_ms_per_request": median(per_request),
        "rps": median(run["rps"] for run in runs),
        "errors": sum(run.get("errors", 0) for run in runs),
    }


def decision_us(nodes: int, rounds: int = 20_000) -> float:
    """CPU microseconds of one routing decision in process (the counts read, the views,
    the rule, the lease taken and freed), as the gateway makes it for a warm model."""
    from nz_proxy.breaker import CircuitBreaker
    from nz_proxy.discovery import Catalogue, Discovery, MemoryCatalogueStore
    from nz_proxy.fleet.fleet import Fleet
    from nz_proxy.fleet.inflight import MemoryInFlight
    from nz_proxy.fleet.node import Backend
    from nz_proxy.fleet.residency import Resident
    from nz_proxy.upstream import Upstream

    fleet = Fleet(
        lambda url: Upstream(
            url, connect_timeout_s=1, read_timeout_s=1, breaker=CircuitBreaker(5, 30)
        ),
        MemoryInFlight(),
        lambda _: MemoryCatalogueStore(),
        refresh_s=60,
        ttl_s=3600,
        lease_ms=30_000,
    )
    model = "llama3.2:latest"
    for i in range(nodes):
        spec = Spec(f"node-{i}", f"http://127.0.0.1:{11434 + i}")
        upstream = fleet.connect(spec.url)
        discovery = Discovery(upstream, MemoryCatalogueStore(), refresh_s=60, ttl_s=3600)
        discovery._adopt(Catalogue(fetched_at=time.time(), entries={model: {"name": model}}))
        backend = Backend(spec, upstream, discovery)
        backend.residents[model] = Resident(4096, None)
        fleet.backends[spec.name] = backend

    def decide() -> None:
        for i in range(rounds):
            candidates = [b for b in fleet.usable() if b.has(model)]
            loads = fleet.inflight.read([b.name for b in candidates], model)
            views = [
                b.view(model, None, n, loading)
                for b, (n, loading) in zip(candidates, loads, strict=True)
            ]
            choice = route(views)
            assert choice is not None
            backend = fleet.backends[choice.node.name]
            fleet._hold(backend, str(i), model, choice.reason)
            fleet.release(backend, str(i))

    started = time.process_time()
    decide()
    return (time.process_time() - started) / rounds * 1e6


def main(duration_s: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        scratch = Path(tmp)
        urls = tuple(stack.enter_context(nginx_stub(scratch))[0] for _ in range(3))
        one = cpu_per_request(urls[:1], scratch, duration_s)
        three = cpu_per_request(urls, scratch, duration_s)
    return {
        "one": one,
        "three": three,
        "routing_cpu_ms": three["cpu_ms_per_request"] - one["cpu_ms_per_request"],
        "decision_us": {"one": decision_us(1), "three": decision_us(3)},
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=2))
