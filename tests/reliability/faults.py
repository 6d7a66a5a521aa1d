"""The fault matrix: each fault injected into a live production stack under traffic.

For every fault the run records what clients saw while it lasted, how long the gateway
took to notice it (the first refused request or failed ``/readyz``) and to recover once
the fault was healed (the first request served again with ``/readyz`` green), and
whether the books balance afterwards (``traffic.reconcile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from nz_core import admin
from nz_core.database import create_engine
from nz_proxy.revocation import LISTENER_NAME
from tests.reliability.stack import HASHER, JOURNAL_GRACE_S, Stack, settle_time, wait_healthy
from tests.reliability.traffic import Traffic, reconcile

__all__ = ["FAULTS", "Fault", "run_fault"]

# A settled row that a killed process never wrote is reaped after AUDIT_JOURNAL_GRACE_S
# (the stack's, tests/reliability/stack.py), so the books of a kill close only after it.
KILLED_ROWS_GRACE_S = JOURNAL_GRACE_S + 15.0


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    inject: Callable[[Stack], None]
    heal: Callable[[Stack], None]
    allowed: frozenset[str]  # statuses (or transport errors) clients may see meanwhile
    expected: str  # SPEC §6.2's behaviour, for the report
    duration_s: float = 2.0
    reconcile_s: float = 30.0


def _redis_signal(sig: int) -> Callable[[Stack], None]:
    def send(stack: Stack) -> None:
        assert stack.redis.process is not None
        os.kill(stack.redis.process.pid, sig)

    return send


def _restart_gateway(stack: Stack) -> None:
    stack.start_gateway()


def _drop_listener(stack: Stack) -> None:
    async def terminate() -> int:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=stack.postgres.port, user="postgres", database="postgres"
        )
        try:
            dropped: int = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1",
                LISTENER_NAME,
            )
            return dropped
        finally:
            await conn.close()

    assert asyncio.run(terminate()) >= 1, "no LISTEN connection to drop"


def _nothing(_stack: Stack) -> None:
    return None


STREAM_TRANSPORT = frozenset({"RemoteProtocolError", "ReadError"})
GATEWAY_DOWN = frozenset({"ConnectError", "RemoteProtocolError", "ReadError", "ConnectTimeout"})

FAULTS = [
    Fault(
        "redis-stopped",
        "redis-server stopped, then started again (empty: no persistence)",
        lambda s: s.redis.stop(),
        lambda s: s.redis.start(),
        frozenset({"200", "503"}),
        "503 gateway_unavailable; counters rebuilt from the ledger after",
    ),
    Fault(
        "redis-paused",
        "redis-server frozen with SIGSTOP, then SIGCONT",
        _redis_signal(signal.SIGSTOP),
        _redis_signal(signal.SIGCONT),
        frozenset({"200", "503"}),
        "503 within a second (0.25 s pool wait + 0.5 s socket timeout, never retried)",
    ),
    Fault(
        "postgres-stopped",
        "PostgreSQL stopped (pg_ctl stop -m fast), then started",
        lambda s: s.postgres.stop(),
        lambda s: s.postgres.start(),
        frozenset({"200", "503"}),
        "cached keys served, audit buffered (503 once the buffer is full); /readyz 503",
    ),
    Fault(
        "postgres-paused",
        "every PostgreSQL process frozen with SIGSTOP, then SIGCONT",
        lambda s: s.postgres.signal(signal.SIGSTOP),
        lambda s: s.postgres.signal(signal.SIGCONT),
        frozenset({"200", "503"}),
        "as stopped: cached keys served, audit buffered; /readyz 503",
    ),
    Fault(
        "backend-slow",
        "the backend sends no first byte for 3 s (read timeout 2 s)",
        lambda s: s.mock.faults(delay_first_byte_s=3.0),
        lambda s: s.mock.faults(delay_first_byte_s=0.0),
        frozenset({"200", "504", "502"}),
        "504 upstream_timeout; 502 while the circuit is open",
    ),
    Fault(
        "backend-failing",
        "the backend answers every request with Ollama's own 500 error",
        lambda s: s.mock.faults(fail_next=1_000_000, fail_status=500),
        lambda s: s.mock.faults(fail_next=0),
        frozenset({"200", "502"}),
        "502 with the backend's message; the circuit stays closed (the node answers)",
    ),
    Fault(
        "backend-proxy-failing",
        "a proxy in front of the backend answers plain-text 502 to everything",
        lambda s: s.mock.faults(fail_next=1_000_000, fail_status=502, fail_plain=True),
        lambda s: s.mock.faults(fail_next=0, fail_plain=False),
        frozenset({"200", "502"}),
        "502 upstream_unavailable; liveness probes fail, the circuit opens, Retry-After",
    ),
    Fault(
        "backend-cuts-streams",
        "the backend drops the connection after 2 frames",
        lambda s: s.mock.faults(cut_stream_after=2),
        lambda s: s.mock.faults(cut_stream_after=None),
        frozenset({"200", "502"}),
        "a stream ends with one error frame; a plain request gets 502",
    ),
    Fault(
        "backend-refusing",
        "the backend process stopped: connections refused",
        lambda s: s.mock.stop(),
        lambda s: s.mock.start(),
        frozenset({"200", "502"}),
        "502 upstream_unavailable, circuit opens",
    ),
    Fault(
        "gateway-killed",
        "kill -9 of the gateway (main process and workers), then restarted",
        lambda s: s.kill_gateway(),
        _restart_gateway,
        frozenset({"200"}) | GATEWAY_DOWN,
        "in-flight requests cut; their leases expire and the journal is reaped",
        duration_s=1.0,
        reconcile_s=KILLED_ROWS_GRACE_S,
    ),
    Fault(
        "listen-dropped",
        "the LISTEN connection terminated by PostgreSQL",
        _drop_listener,
        _nothing,
        frozenset({"200"}),
        "no client-visible effect; a revocation still lands within seconds",
        duration_s=0.5,
    ),
]


async def _probe(url: str, stop: asyncio.Event, seen: list[tuple[float, bool]]) -> None:
    """/readyz every 100 ms: (when, ready)."""
    async with httpx.AsyncClient(timeout=1.0) as client:
        while not stop.is_set():
            try:
                ready = (await client.get(url + "/readyz")).status_code == 200
            except httpx.HTTPError:
                ready = False
            seen.append((time.monotonic(), ready))
            await asyncio.sleep(0.1)


async def _revocation_delay(stack: Stack) -> float:
    """Revoke a fresh, cached key; seconds until the gateway refuses it."""
    engine = create_engine(stack.postgres.url)
    try:
        tenant = stack.tenants[0].name
        key = (await admin.create_key(engine, tenant, "revoked-later", hasher=HASHER)).key
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(stack.url + "/v1/models", headers=headers)).status_code == 200
            await admin.revoke_key(engine, key[:12])
            revoked = time.monotonic()
            while (await client.get(stack.url + "/v1/models", headers=headers)).status_code != 401:
                assert time.monotonic() - revoked < 10, "a revoked key still works"
                await asyncio.sleep(0.05)
            return time.monotonic() - revoked
    finally:
        await engine.dispose()


async def _warm(url: str, tenants: Any, timeout_s: float = 10.0) -> None:
    """Steady state before the baseline: the new keys verified and cached by every
    worker, and whatever the previous fault left behind settled (its recovery was that
    row's figure, not this one's)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        for tenant in tenants:
            headers = {"Authorization": f"Bearer {tenant.key}"}
            served = 0
            while served < 8:
                response = await client.get("/v1/models", headers=headers)
                served = served + 1 if response.status_code == 200 else 0
                assert time.monotonic() < deadline, f"not healthy before the fault: {response}"


def _log_size(stack: Stack) -> int:
    return stack.gateway.log.stat().st_size if stack.gateway is not None else 0


def _causes(stack: Stack, offset: int) -> dict[str, int]:
    """Why the gateway refused what it refused (its log lines' ``cause``), to read a
    failing row by."""
    if stack.gateway is None:
        return {}
    raw = stack.gateway.log.read_bytes()
    found: Counter[str] = Counter()
    for line in raw[offset if offset <= len(raw) else 0 :].splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            cause = json.loads(line).get("cause")
            if cause:
                found[cause] += 1
    return dict(found)


async def run_fault(stack: Stack, fault: Fault, baseline_s: float = 1.0) -> dict[str, Any]:
    """Inject ``fault`` under traffic, heal it, wait for recovery, balance the books."""
    tenants = await stack.add_tenants(fault.name)
    await _warm(stack.url, tenants)
    log_from = _log_size(stack)
    readiness: list[tuple[float, bool]] = []
    stop_probe = asyncio.Event()
    probe = asyncio.create_task(_probe(stack.url, stop_probe, readiness))
    extra: dict[str, Any] = {}
    async with Traffic(stack.url, tenants) as traffic:
        await asyncio.sleep(baseline_s)
        injected = time.monotonic()
        await asyncio.to_thread(fault.inject, stack)
        if fault.name == "listen-dropped":
            extra["revocation_s"] = round(await _revocation_delay(stack), 3)
        await asyncio.sleep(fault.duration_s)
        healed = time.monotonic()
        await asyncio.to_thread(fault.heal, stack)
        deadline = healed + 30
        while time.monotonic() < deadline:
            served = traffic.first(healed, lambda o: o.status == 200 and o.started >= healed)
            ready = any(ok for when, ok in readiness if when >= healed)
            if served is not None and ready:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # some steady traffic after recovery
    stop_probe.set()
    await probe
    await asyncio.to_thread(wait_healthy, stack.url)

    def refused(o: Any) -> bool:
        return o.status != 200 or o.stream_error

    noticed = [t for t in (traffic.first(injected, refused),) if t is not None] + [
        when - injected for when, ok in readiness if when >= injected and not ok
    ][:1]
    served_again = traffic.first(healed, lambda o: o.status == 200 and o.started >= healed)
    before = traffic.statuses(ended_by=injected)
    during = traffic.statuses(injected, healed + (served_again or 0))
    await settle_time()
    with contextlib.closing(stack.redis_client()) as store:
        books = await reconcile(
            traffic.outcomes, tenants, stack.postgres.url, store, wait_s=fault.reconcile_s
        )
    return {
        "fault": fault.name,
        "what": fault.what,
        "expected": fault.expected,
        "before": dict(before),
        "during": dict(during),
        "unexpected": sorted(set(during) - fault.allowed),
        "stream_errors": sum(o.stream_error for o in traffic.outcomes if o.started >= injected),
        "detect_s": round(min(noticed), 3) if noticed else None,
        "recover_s": round(served_again, 3) if served_again is not None else None,
        "causes": _causes(stack, log_from),
        "books": books.summary(),
        "books_detail": {
            "missing": books.missing[:5],
            "duplicated": books.duplicated[:5],
            "ledger_mismatch": books.ledger_mismatch,
            "leaked_leases": books.leaked_leases,
            "open_journal": books.open_journal,
            "counter_mismatch": books.counter_mismatch,
        },
        "clean": books.clean,
        **extra,
    }
