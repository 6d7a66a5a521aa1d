"""Audit rows, prompt log, metrics and the absence of key material (SPEC §4.8, §10)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from nz_core import admin
from nz_core.database import connect
from nz_core.keys import generate_key
from nz_core.schema import api_keys, audit_log, prompt_log
from tests import services
from tests.e2e.conftest import Deployment, RigFactory

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "The secret word is basil"}]}


async def rows_with(deployment: Deployment, *request_ids: str) -> dict[str, sa.Row[object]]:
    deadline = time.monotonic() + 10
    while True:
        async with connect(deployment.engine) as conn:
            rows = (
                await conn.execute(
                    sa.select(audit_log).where(audit_log.c.request_id.in_(request_ids))
                )
            ).all()
        found = {row.request_id: row for row in rows}
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_every_request_is_audited_even_refused_ones(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    unknown = generate_key()
    cases = {
        "ok": ({"Authorization": f"Bearer {key}"}, "/v1/chat/completions"),
        "malformed": ({"Authorization": "Bearer nz_nonsense"}, "/v1/chat/completions"),
        "unknown": ({"Authorization": f"Bearer {unknown}"}, "/api/chat"),
        "blocked": ({"Authorization": f"Bearer {key}"}, "/api/pull"),
        "denied": ({"Authorization": f"Bearer {key}"}, "/api/show"),
    }
    ids = {name: uuid.uuid4().hex for name in cases}
    for name, (headers, path) in cases.items():
        body = CHAT if name != "denied" else {"model": "mistral"}
        httpx.post(deployment.url + path, headers={**headers, "X-Request-ID": ids[name]}, json=body)
    rows = await rows_with(deployment, *ids.values())
    assert len(rows) == len(cases)
    ok = rows[ids["ok"]]
    assert (ok.status, ok.key_prefix, ok.stream) == (200, key[:12], False)
    assert ok.model == "llama3.2:latest"
    assert ok.tokens_in > 0
    assert ok.tokens_out == 12
    assert ok.tenant_id is not None
    assert ok.latency_ms >= 0
    assert ok.client_ip == "127.0.0.1"
    assert (rows[ids["malformed"]].status, rows[ids["malformed"]].key_prefix) == (401, None)
    assert (rows[ids["unknown"]].status, rows[ids["unknown"]].key_prefix) == (401, unknown[:12])
    assert rows[ids["blocked"]].status == 403
    assert rows[ids["denied"]].status == 403


async def test_prompt_log_only_for_keys_that_opted_in(deployment: Deployment) -> None:
    logged = await deployment.key(models=["llama3.2"])
    quiet = await deployment.key(models=["llama3.2"])
    await admin.set_prompt_log(deployment.engine, logged[:12], enabled=True, retention_days=3)
    for key in (logged, quiet):
        for body in ({**CHAT, "stream": True}, CHAT):
            response = httpx.post(
                deployment.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json=body,
            )
            assert response.status_code == 200
    answer = response.json()["choices"][0]["message"]["content"]
    deadline = time.monotonic() + 10
    while True:
        async with connect(deployment.engine) as conn:
            rows = (
                await conn.execute(
                    sa.select(prompt_log, api_keys.c.prefix)
                    .join(api_keys, api_keys.c.id == prompt_log.c.key_id)
                    .where(api_keys.c.prefix.in_([logged[:12], quiet[:12]]))
                )
            ).all()
        if len(rows) >= 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert {row.prefix for row in rows} == {logged[:12]}
    assert len(rows) == 2
    for row in rows:
        assert "The secret word is basil" in row.request_body
        assert row.response_text
        kept = row.expires_at - row.ts
        assert kept.days == 3
    assert answer in {row.response_text for row in rows}


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_metrics_add_up_across_workers_and_stay_local(
    rig: RigFactory, deployment: Deployment
) -> None:
    everywhere = "0.0.0.0"  # to be reached on a non-loopback address too
    r = rig(
        "--token-rate", "0", "--response-tokens", "12", GATEWAY_WORKERS="2", GATEWAY_HOST=everywhere
    )
    tenant = await deployment.tenant(allow_all=True)
    key = await deployment.key(tenant)
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        for _ in range(20):
            # A new connection each time, so Granian spreads them over both workers.
            client.post(
                r.gateway.url + "/api/generate",
                json={"model": "llama3.2", "prompt": "x", "stream": False},
                headers={"Connection": "close"},
            )
        invented = client.post(
            r.gateway.url + "/api/generate", json={"model": "made-up-model:7b", "prompt": "x"}
        )
        assert invented.status_code == 403
    text = httpx.get(r.gateway.url + "/metrics").text
    assert "made-up-model" not in text  # a name a client made up never becomes a series
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_requests_total{") and f'tenant="{tenant}"' in line
    )
    assert served == 21  # 20 served, 1 refused
    tokens_out = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_tokens_total{")
        and f'tenant="{tenant}"' in line
        and 'direction="out"' in line
    )
    assert tokens_out == 20 * 12
    assert "gateway_request_duration_seconds_bucket" in text
    assert "gateway_circuit_breaker_state" in text
    assert key[:12] not in text
    port = r.gateway.url.rsplit(":", 1)[1]
    remote = httpx.get(f"http://{services.outbound_address()}:{port}/metrics")
    assert remote.status_code == 404  # not for anyone but the machine itself
    # A local reverse proxy is a loopback peer too: what it forwards came from outside.
    proxied = httpx.get(r.gateway.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 404
    remote_spoofed = httpx.get(
        f"http://{services.outbound_address()}:{port}/metrics",
        headers={"X-Forwarded-For": "127.0.0.1"},
    )
    assert remote_spoofed.status_code == 404


async def test_no_key_material_anywhere(deployment: Deployment) -> None:
    """Known keys (good, wrong, revoked, malformed) through every surface; then neither
    the log, the metrics, the audit rows nor any error body contains any of them."""
    good = await deployment.key(models=["llama3.2", "all-minilm"])
    revoked = await deployment.key(models=["llama3.2"])
    await admin.revoke_key(deployment.engine, revoked[:12])
    wrong = good[:12] + generate_key()[12:]
    keys = [good, revoked, wrong, "nz_" + "Q" * 51 + "!"]
    bodies: list[str] = []
    with httpx.Client(base_url=deployment.url, timeout=10) as client:
        for key in keys:
            for header in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}):
                for method, path, body in (
                    ("POST", "/v1/chat/completions", {**CHAT, "stream": True}),
                    ("POST", "/api/chat", {**CHAT, "stream": False}),
                    ("POST", "/v1/embeddings", {"model": "all-minilm", "input": key}),
                    ("POST", "/api/show", {"model": "mistral"}),
                    ("GET", "/v1/models/" + key, None),
                    ("POST", "/api/pull", {"model": key}),
                    ("POST", "/v1/chat/completions", {"model": key, "messages": []}),
                ):
                    response = client.request(method, path, headers=header, json=body)
                    if response.status_code >= 400:
                        bodies.append(response.text)
        metrics = client.get("/metrics").text
    await asyncio.sleep(1.0)  # audit rows flushed, log lines written
    async with connect(deployment.engine) as conn:
        audit = (await conn.execute(sa.select(audit_log))).all()
    haystacks = {
        "log": deployment.gateway.output(),
        "metrics": metrics,
        "audit": "\n".join(" ".join(str(v) for v in row) for row in audit),
        "error bodies": "\n".join(bodies),
    }
    assert bodies
    for where, text in haystacks.items():
        for key in keys:
            assert key not in text, f"a key appears in the {where}"
            assert key[12:40] not in text, f"a key's secret appears in the {where}"
