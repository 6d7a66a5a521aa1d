"""Model discovery (SPEC §4.6): polled, shared in Redis, read-only."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from tests.e2e.conftest import Deployment, RigFactory


def test_a_model_pulled_out_of_band_appears_within_one_refresh(rig: RigFactory) -> None:
    r = rig("--token-rate", "0", MODEL_DISCOVERY_REFRESH_S="1")
    models = r.gateway.url + "/v1/models"
    before = {m["id"] for m in httpx.get(models, headers=r.auth).json()["data"]}
    assert "newcomer:latest" not in before
    assert r.mock is not None
    httpx.post(r.mock.url + "/_mock/models", json={"models": ["newcomer"], "replace": False})
    added_at = time.monotonic()
    while "newcomer:latest" not in {
        m["id"] for m in httpx.get(models, headers=r.auth).json()["data"]
    }:
        assert time.monotonic() - added_at < 3, "not discovered within a refresh interval"
        time.sleep(0.1)
    chat = r.post("/api/chat", {"model": "newcomer", "messages": [], "stream": False})
    assert chat.status_code == 200
    # Discovery only ever asks /api/tags and /api/ps (what is loaded); it never pulls.
    assert set(r.mock_stats()["requests"]) <= {"/api/tags", "/api/ps", "/api/chat"}


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
def test_discovery_is_shared_in_redis_with_a_ttl(deployment: Deployment) -> None:
    assert deployment.redis_url is not None
    with redis.Redis.from_url(deployment.redis_url) as client:
        # One list per node (the single OLLAMA_BASE_URL is node-1).
        assert client.exists("gateway:models:discovered:node-1")
        ttl = client.pttl("gateway:models:discovered:node-1")
    assert 0 < ttl <= 30_000
