"""Limits and budgets through the real gateway (SPEC §4.4, §6.5), in both storage modes."""

from __future__ import annotations

import asyncio
import time

import httpx
import sqlalchemy as sa

from nz_core import admin
from nz_core.database import connect
from nz_core.limits import Limits
from nz_core.schema import api_keys, audit_log, budget_usage
from nz_proxy.errors import wait_in_words
from tests.e2e.conftest import Deployment, RigFactory

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}]}


def post(url: str, key: str, body: object, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(url + path, headers={"Authorization": f"Bearer {key}"}, json=body, timeout=30)


async def key_id(deployment: Deployment, key: str) -> int:
    async with connect(deployment.engine) as conn:
        return int(await conn.scalar(sa.select(api_keys.c.id).where(api_keys.c.prefix == key[:12])))


async def audit_for(deployment: Deployment, key: str, expected: int) -> list[sa.Row[object]]:
    """The key's audit rows, once ``expected`` of them are written (flushes are batched)."""
    deadline = time.monotonic() + 10
    while True:
        async with connect(deployment.engine) as conn:
            rows = (
                await conn.execute(sa.select(audit_log).where(audit_log.c.key_prefix == key[:12]))
            ).all()
        if len(rows) >= expected or time.monotonic() > deadline:
            return list(rows)
        await asyncio.sleep(0.1)


async def test_rpm_five_then_a_429_with_retry_after(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"], limits=Limits(rpm=5))
    responses = [post(deployment.url, key, CHAT) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    for left, response in zip(range(4, -1, -1), responses, strict=False):
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        assert response.headers["x-ratelimit-remaining-requests"] == str(left)
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in response.headers  # tpm unlimited
        assert "x-budget-period" not in response.headers  # no budget
    refused = responses[-1]
    wait = int(refused.headers["retry-after"])
    assert 1 <= wait <= 60
    assert 0 < int(refused.headers["retry-after-ms"]) <= 60_000
    assert refused.json()["error"] == {
        "message": f"Request rate limit reached; retry in {wait} s.",
        "type": "rate_limit_exceeded",
        "param": None,
        "code": "rpm_exceeded",
    }
    native = post(deployment.url, key, {**CHAT, "stream": False}, "/api/chat")
    assert native.status_code == 429
    # Ollama's flat shape: front-ends show this string alone, so it says when.
    wait = int(native.headers["retry-after"])
    assert native.json() == {"error": f"Request rate limit reached; retry in {wait} s."}


async def test_listing_spares_rpm_and_reports_budgets(deployment: Deployment) -> None:
    """Listings spend the listing allowance (LISTING_RPM), not the key's rpm: a
    front-end listing models on every page load leaves its messages their rpm."""
    key = await deployment.key(models=["llama3.2"], limits=Limits(rpm=2))
    await admin.set_budget(deployment.engine, key[:12], daily=5000)
    auth = {"Authorization": f"Bearer {key}"}
    assert post(deployment.url, key, {**CHAT, "max_tokens": 5}).status_code == 200
    for path in ("/v1/models", "/api/tags", "/api/ps", "/api/version"):
        listed = httpx.get(deployment.url + path, headers=auth)
        assert listed.status_code == 200, path
        assert listed.headers["x-budget-period"] == "day"
        assert int(listed.headers["x-budget-tokens-remaining"]) < 5000
        assert "x-ratelimit-remaining-requests" not in listed.headers  # not counted there
    second = post(deployment.url, key, {**CHAT, "max_tokens": 5})
    assert second.status_code == 200
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert post(deployment.url, key, CHAT).status_code == 429


async def test_budget_holds_under_a_concurrent_burst(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    await admin.set_budget(deployment.engine, key[:12], daily=1000)

    async def one(client: httpx.AsyncClient, i: int) -> int:
        body = {**CHAT, "stream": True}
        if i % 3:
            body["max_tokens"] = 20
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            await response.aread()
            return response.status_code

    async with httpx.AsyncClient(
        base_url=deployment.url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=httpx.Limits(max_connections=50),
    ) as client:
        statuses = await asyncio.gather(*(one(client, i) for i in range(50)))
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 1
    rows = await audit_for(deployment, key, 50)
    assert len(rows) == 50
    audited = sum(r.tokens_in + r.tokens_out for r in rows)  # type: ignore[attr-defined]
    # The mock's prompts are below the gateway's estimate: no overshoot is allowed at all.
    assert audited <= 1000
    async with connect(deployment.engine) as conn:
        ledger = await conn.scalar(
            sa.select(budget_usage.c.tokens).where(
                budget_usage.c.key_id == await key_id(deployment, key),
                budget_usage.c.period == "day",
            )
        )
    assert ledger == audited
    refused = [r for r in rows if r.status == 429]  # type: ignore[attr-defined]
    assert len(refused) == statuses.count(429)


async def test_budget_exhausted_says_when_it_resets(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    await admin.set_budget(deployment.engine, key[:12], daily=10, total=10_000)
    refused = post(deployment.url, key, CHAT)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "insufficient_quota"
    assert refused.json()["error"]["code"] == "budget_exhausted"
    assert 1 <= int(refused.headers["retry-after"]) <= 86_400  # until midnight
    total = await deployment.key(models=["llama3.2"])
    await admin.set_budget(deployment.engine, total[:12], total=10)
    wait = wait_in_words(int(refused.headers["retry-after-ms"]))
    assert refused.json()["error"]["message"] == (
        f"Token budget exhausted for period 'day'; retry in {wait}, when it resets."
    )
    forever = post(deployment.url, total, CHAT)
    assert forever.status_code == 429
    assert "retry-after" not in forever.headers  # a total budget never resets
    assert forever.json()["error"]["message"] == (
        "Token budget exhausted for period 'total', which never resets; ask for a larger budget."
    )


async def test_explicit_caps_must_fit_the_budget(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    await admin.set_budget(deployment.engine, key[:12], daily=300)
    assert post(deployment.url, key, {**CHAT, "max_tokens": 1000}).status_code == 429
    fits = post(deployment.url, key, {**CHAT, "max_tokens": 50})
    assert fits.status_code == 200
    assert fits.headers["x-budget-period"] == "day"


async def test_the_completion_cap_is_forwarded(rig: RigFactory, deployment: Deployment) -> None:
    """Without max_tokens, an answer stops at the default cap, because the cap is
    forwarded as options.num_predict: for a counted key it is what was reserved, and an
    uncounted key is bounded all the same (``num_predict: -1`` would not end)."""
    r = rig("--token-rate", "0", "--response-tokens", "100", BUDGET_DEFAULT_COMPLETION_CAP="7")
    counted = await deployment.key(allow_all=True, limits=Limits(tpm=100_000))
    uncounted = post(r.gateway.url, r.key, CHAT).json()
    assert uncounted["usage"]["completion_tokens"] == 7
    unbounded = {**CHAT, "stream": False, "options": {"num_predict": -1}}
    native = post(r.gateway.url, r.key, unbounded, "/api/chat").json()
    assert native["eval_count"] == 7
    asked = post(r.gateway.url, r.key, {**CHAT, "max_tokens": 50}).json()
    assert asked["usage"]["completion_tokens"] == 50  # a cap the client asks for is its own
    capped = post(r.gateway.url, counted, CHAT).json()
    assert capped["usage"]["completion_tokens"] == 7
    assert capped["choices"][0]["finish_reason"] == "length"
    native = post(r.gateway.url, counted, {**CHAT, "stream": False}, "/api/chat").json()
    assert native["eval_count"] == 7
    asked = post(r.gateway.url, counted, {**CHAT, "max_tokens": 30}).json()
    assert asked["usage"]["completion_tokens"] == 30  # the client's own cap is kept


async def test_token_window(deployment: Deployment) -> None:
    """Each answer uses about 20 tokens; the window admits while it holds under 50."""
    key = await deployment.key(models=["llama3.2"], limits=Limits(tpm=50))
    responses = [post(deployment.url, key, {**CHAT, "max_tokens": 150}) for _ in range(6)]
    assert responses[0].status_code == 200
    assert responses[0].headers["x-ratelimit-limit-tokens"] == "50"
    assert responses[0].headers["x-ratelimit-remaining-tokens"] == "0"  # reserved > 50
    refused = [r for r in responses if r.status_code == 429]
    assert refused
    assert responses.index(refused[0]) >= 2
    assert refused[0].json()["error"]["code"] == "tpm_exceeded"
    wait = int(refused[0].headers["retry-after"])
    assert 1 <= wait <= 60
    assert refused[0].json()["error"]["message"] == f"Token rate limit reached; retry in {wait} s."
    assert refused[0].headers["x-ratelimit-remaining-tokens"] == "0"


async def test_refusals_and_listings_carry_the_headers(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"], limits=Limits(rpm=100, tpm=100_000))
    await admin.set_budget(deployment.engine, key[:12], monthly=10)
    auth = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(deployment.url + "/v1/models", headers=auth)  # before any inference
    assert listed.headers["x-budget-period"] == "month"
    assert listed.headers["x-budget-tokens-remaining"] == "10"
    assert listed.headers["x-ratelimit-limit-tokens"] == "100000"
    refused = post(deployment.url, key, CHAT)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exhausted"
    assert refused.headers["x-budget-tokens-remaining"] == "10"
    # Neither the listing nor the refused request was counted against rpm.
    assert refused.headers["x-ratelimit-remaining-requests"] == "100"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "100000"


async def test_embeddings_reserve_their_prompt_only(deployment: Deployment) -> None:
    key = await deployment.key(models=["all-minilm"], limits=Limits(tpm=100_000))
    response = post(
        deployment.url, key, {"model": "all-minilm", "input": "a short text"}, "/v1/embeddings"
    )
    assert response.status_code == 200
    reserved = 100_000 - int(response.headers["x-ratelimit-remaining-tokens"])
    assert 0 < reserved < 100  # an estimate of the prompt, no completion cap on top
