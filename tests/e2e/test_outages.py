"""Crashes, outages and shutdowns (SPEC §4.4, §4.8, §6.2): the gateway fails closed,
recovers by itself, and loses no accounting."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.database import connect, create_engine
from nz_core.limits import Limits
from nz_core.migrations import upgrade
from nz_core.schema import api_keys, audit_log, budget_usage
from tests import services
from tests.e2e.conftest import HASHER, Deployment, RigFactory
from tests.processes import private_redis, start_gateway, stop_gateway

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}]}


def chat(url: str, key: str, **extra: object) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={**CHAT, **extra},
        timeout=30,
    )


def until(check: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Seconds until ``check()`` holds; fails the test after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(step)
    return time.monotonic() - started


async def accounting(
    engine: AsyncEngine, key: str, expected: int, status: int | None = None
) -> tuple[list[int], int, int]:
    """(audit statuses, audit tokens, ledger total tokens) once ``expected`` rows (with
    ``status``, when given) exist."""
    deadline = time.monotonic() + 15
    while True:
        async with connect(engine) as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        audit_log.c.status, audit_log.c.tokens_in, audit_log.c.tokens_out
                    ).where(audit_log.c.key_prefix == key[:12])
                )
            ).all()
            key_id = await conn.scalar(
                sa.select(api_keys.c.id).where(api_keys.c.prefix == key[:12])
            )
            ledger = await conn.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(budget_usage.c.tokens), 0)).where(
                    budget_usage.c.key_id == key_id, budget_usage.c.period == "total"
                )
            )
        counted = [r for r in rows if status is None or r.status == status]
        if len(counted) >= expected or time.monotonic() > deadline:
            statuses = sorted(r.status for r in rows)
            return statuses, sum(r.tokens_in + r.tokens_out for r in rows), int(ledger)
        await asyncio.sleep(0.1)


async def test_slots_of_a_killed_gateway_free_within_the_lease(
    rig: RigFactory, deployment: Deployment
) -> None:
    key = await deployment.key(allow_all=True, limits=Limits(concurrent=2))
    r = rig("--token-rate", "10", "--response-tokens", "300", CONCURRENCY_LEASE_S="3")
    with ExitStack() as streams:
        client = streams.enter_context(httpx.Client(timeout=30))
        for _ in range(2):
            response = streams.enter_context(
                client.stream(
                    "POST",
                    r.gateway.url + "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={**CHAT, "stream": True},
                )
            )
            assert response.status_code == 200
        third = chat(r.gateway.url, key, stream=True)
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "concurrency_exceeded"
        time.sleep(0.5)  # the 429's audit row is written (denials are not journaled)
        r.gateway.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        r.gateway.process.wait()
    restarted = start_gateway(r.gateway.log.parent, r.gateway.env)
    try:
        freed = until(
            lambda: chat(restarted.url, key, max_tokens=2).status_code == 200, timeout=10, step=0.1
        )
        waited = time.monotonic() - killed_at
        assert waited <= 3 + 1.5, f"slots freed after {waited:.2f}s"
        if deployment.redis_url is not None:
            # The restarted gateway reaps the two abandoned streams: audited once, at
            # their reservations, and the ledger agrees.
            # (The freed request's own row may land after the reaped ones.)
            await accounting(deployment.engine, key, 1, status=200)
            statuses, audited, ledger = await accounting(deployment.engine, key, 2, status=500)
            assert statuses.count(500) == 2
            assert 200 in statuses
            assert 429 in statuses
            assert audited == ledger
        assert freed >= 0
    finally:
        stop_gateway(restarted)


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_redis_outage_fails_closed_and_recovers(
    rig: RigFactory, deployment: Deployment, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as redis_server:
        r = rig("--token-rate", "0", REDIS_URL=redis_server.url)
        key = await deployment.key(allow_all=True)
        await admin.set_budget(deployment.engine, key[:12], daily=100_000)
        first = chat(r.gateway.url, key, max_tokens=20)
        assert first.status_code == 200
        fresh = int(first.headers["x-budget-tokens-remaining"])  # 100000 - one reservation
        assert chat(r.gateway.url, key, max_tokens=20).status_code == 200
        _, used, ledger = await accounting(deployment.engine, key, 2)
        assert used == ledger > 0

        redis_server.stop()
        refused: list[httpx.Response] = []

        def refuses() -> bool:
            response = chat(r.gateway.url, key, max_tokens=20)
            refused.append(response)
            return response.status_code == 503

        detected = until(refuses, timeout=5)
        assert detected < 1.0, f"503 after {detected:.2f}s"
        assert refused[-1].json()["error"]["code"] == "gateway_unavailable"
        # The operator learns which dependency failed; the client does not.
        assert '"cause": "redis: ConnectionError"' in r.gateway.output()
        assert "redis" not in refused[-1].text
        ready = httpx.get(r.gateway.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["state_store"] == "unreachable"

        redis_server.start()  # empty: every counter is gone
        recovered: list[httpx.Response] = []

        def serves() -> bool:
            response = chat(r.gateway.url, key, max_tokens=20)
            recovered.append(response)
            return response.status_code == 200

        until(serves, timeout=10, step=0.1)
        remaining = int(recovered[-1].headers["x-budget-tokens-remaining"])
        # Rebuilt from the ledger, not from zero.
        assert remaining == fresh - ledger
        assert httpx.get(r.gateway.url + "/readyz").status_code == 200


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_a_burst_wider_than_the_redis_pool_waits_for_a_connection(
    rig: RigFactory,
) -> None:
    # Two connections for 150 simultaneous requests: they queue for a connection.
    # (redis-py's default pool raises "Too many connections" past 100: 503s.)
    r = rig("--token-rate", "0", "--response-tokens", "3", REDIS_MAX_CONNECTIONS="2")
    unbounded = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=30, limits=unbounded) as client:
        responses = await asyncio.gather(
            *(
                client.post(r.gateway.url + "/v1/chat/completions", headers=r.auth, json=CHAT)
                for _ in range(150)
            )
        )
    assert [response.status_code for response in responses] == [200] * 150


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_database_outage_buffers_then_refuses_then_recovers(
    rig: RigFactory, deployment: Deployment
) -> None:
    name = await services.create_database("outage")
    url = services.pg_url(name)
    engine = create_engine(url)
    try:
        await asyncio.to_thread(upgrade, url)
        await admin.create_tenant(engine, "outage", allow_all_models=True)
        key = (await admin.create_key(engine, "outage", "k", hasher=HASHER)).key
        r = rig("--token-rate", "0", DATABASE_URL=url, AUDIT_BUFFER_ROWS="10")
        sent: list[int] = [chat(r.gateway.url, key).status_code]
        assert sent == [200]  # the key is cached now
        await accounting(engine, key, 1)  # and its row written: the buffer is empty
        await services.block_database(name, allow=False)
        statuses = [chat(r.gateway.url, key).status_code for _ in range(14)]
        sent += statuses
        assert statuses[:10] == [200] * 10  # buffered while the database is away
        assert statuses[10:] == [503] * 4  # then full: nothing more is served unaudited
        ready = httpx.get(r.gateway.url + "/readyz").json()
        assert ready["checks"]["database"] == "unreachable"
        await services.block_database(name, allow=True)

        def serves() -> bool:
            sent.append(chat(r.gateway.url, key).status_code)
            return sent[-1] == 200

        until(serves, timeout=15, step=0.2)
        # Every request has its row, the refused ones included, and the ledger agrees.
        audited_statuses, audited, ledger = await accounting(engine, key, len(sent))
        assert audited_statuses == sorted(sent)
        assert audited == ledger > 0
    finally:
        await engine.dispose()
        await services.block_database(name, allow=True)
        await services.drop_database(name)


async def test_sigterm_finishes_streams_and_audits_every_request(
    rig: RigFactory, deployment: Deployment
) -> None:
    key = await deployment.key(allow_all=True, limits=Limits(rpm=6))
    r = rig("--token-rate", "25", "--response-tokens", "50")  # 2 s streams
    results: list[tuple[int, str]] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            r.gateway.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={**CHAT, "stream": True},
            timeout=60,
        ) as response:
            results.append((response.status_code, response.read().decode()))

    threads = [threading.Thread(target=stream) for _ in range(9)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    time.sleep(0.5)
    r.gateway.kill(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert r.gateway.process.wait(timeout=40) == 0
    codes = sorted(code for code, _ in results)
    assert codes == [200] * 6 + [429] * 3
    finished = [body for code, body in results if code == 200]
    assert all(body.rstrip().endswith("data: [DONE]") for body in finished)
    statuses, audited, ledger = await accounting(deployment.engine, key, 9)
    assert statuses == [200] * 6 + [429] * 3
    assert audited == ledger > 0


# -- a dead backend and the clients that retry (issue 15) -----------------------------------


def sdk_with_defaults(url: str, key: str, seen: list[Any]) -> openai.OpenAI:
    """The `openai` SDK as applications build it (2 retries, honouring Retry-After up
    to a minute or two), with every response it receives noted."""
    http = openai.DefaultHttpxClient(event_hooks={"response": [seen.append]})
    return openai.OpenAI(base_url=url + "/v1", api_key=key, http_client=http)


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
def test_the_openai_sdk_gives_up_on_a_dead_backend_within_seconds(rig: RigFactory) -> None:
    """Discovery never reached the backend. With the default refresh interval (60 s) the
    502 once said `Retry-After: 60`, and the SDK waited twice: two minutes. It says
    when discovery looks again (every 2 s while the backend is silent)."""
    r = rig(dead_backend=True, MODEL_DISCOVERY_REFRESH_S="60", MODEL_DISCOVERY_CACHE_TTL_S="180")
    seen: list[Any] = []
    started = time.monotonic()
    with (
        sdk_with_defaults(r.gateway.url, r.key, seen) as sdk,
        pytest.raises(openai.InternalServerError) as failed,
    ):
        sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"the SDK gave up after {elapsed:.1f} s"
    assert [response.status_code for response in seen] == [502] * 3  # two retries
    for response in seen:
        assert int(response.headers["retry-after-ms"]) <= 2100
        assert int(response.headers["retry-after"]) <= 3
    assert failed.value.code == "upstream_unavailable"


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
def test_an_open_circuit_says_how_long_it_stays_open(rig: RigFactory) -> None:
    """The backend dies after discovery: five refused connections open the circuit, and
    its 502 says the time left until the probe, which the SDK waits, not a fixed 60 s."""
    r = rig("--token-rate", "0", CIRCUIT_BREAKER_FAILURES="5", CIRCUIT_BREAKER_RESET_S="6")
    assert r.post("/api/chat", {**CHAT, "stream": False}).status_code == 200
    r.faults(refuse_connections_s=60)
    for _ in range(5):
        assert r.post("/api/chat", {**CHAT, "stream": False}).status_code == 502
    opened_at = time.monotonic()
    seen: list[Any] = []
    with (
        sdk_with_defaults(r.gateway.url, r.key, seen) as sdk,
        pytest.raises(openai.InternalServerError),
    ):
        sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    elapsed = time.monotonic() - opened_at
    first = int(seen[0].headers["retry-after-ms"])
    assert 4000 <= first <= 6000  # what is left of the 6 s
    assert "retry-after" not in seen[1].headers  # the probe, refused by the node itself
    assert int(seen[2].headers["retry-after-ms"]) > 4000  # the failed probe reopened it
    assert first / 1000 <= elapsed < 15, f"the SDK gave up after {elapsed:.1f} s"
