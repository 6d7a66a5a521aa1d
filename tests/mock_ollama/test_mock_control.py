"""The `/_mock/*` control API: counters, reset, models and generation settings."""

from __future__ import annotations

import time

import httpx
import ollama

from .frames import ndjson_frames

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


def test_every_ollama_request_is_counted_by_path(http: httpx.Client) -> None:
    http.get("/")
    http.get("/api/tags")
    http.get("/api/tags")
    http.get("/no/such/path")
    http.get("/api/chat")  # 405, still counted
    http.post("/api/chat", json=CHAT)
    http.post("/api/show", json={"model": "nope"})
    http.get("/_mock/faults")
    stats = http.get("/_mock/stats").json()
    assert stats["requests"] == {
        "/": 1,
        "/api/tags": 2,
        "/no/such/path": 1,
        "/api/chat": 2,
        "/api/show": 1,
    }
    assert stats["total_requests"] == 7
    assert stats["streams"]["started"] == stats["streams"]["completed"] == 1
    assert stats["frames_sent"] == 25
    assert stats["open_streams"] == 0


def test_reset_restores_the_startup_state(http: httpx.Client) -> None:
    http.post("/_mock/faults", json={"fail_next": 3})
    http.post("/_mock/models", json={"models": ["only:1b"]})
    http.post("/_mock/config", json={"response_tokens": 2})
    http.get("/api/tags")
    body = http.post("/_mock/reset").json()
    assert body["requests"] == {}
    assert body["faults"]["fail_next"] == 0
    assert http.get("/_mock/config").json() == {"token_rate": 0.0, "response_tokens": 24}
    names = [m["name"] for m in http.get("/api/tags").json()["models"]]
    assert "llama3.2:latest" in names
    assert "only:1b" not in names


def test_models_replace_and_add(http: httpx.Client, client: ollama.Client) -> None:
    replaced = http.post("/_mock/models", json={"models": ["alpha", "beta:7b", "gamma-embed"]})
    assert [m["name"] for m in replaced.json()["models"]] == [
        "alpha:latest",
        "beta:7b",
        "gamma-embed:latest",
    ]
    assert client.show("gamma-embed").capabilities == ["embedding"]
    assert client.show("beta:7b").details.parameter_size == "7.0B"  # type: ignore[union-attr]
    added = http.post("/_mock/models", json={"models": ["delta"], "replace": False}).json()
    assert {m["name"] for m in added["models"]} == {
        "alpha:latest",
        "beta:7b",
        "gamma-embed:latest",
        "delta:latest",
    }
    bad = http.post("/_mock/models", json={"models": "alpha"})
    assert bad.status_code == 400


def test_config_paces_streams(http: httpx.Client) -> None:
    assert http.get("/_mock/config").json() == {"token_rate": 0.0, "response_tokens": 24}
    changed = http.post("/_mock/config", json={"token_rate": 20, "response_tokens": 5})
    assert changed.json() == {"token_rate": 20.0, "response_tokens": 5}
    started = time.monotonic()
    frames = ndjson_frames(http.post("/api/chat", json=CHAT).content)
    elapsed = time.monotonic() - started
    assert len(frames) == 6
    # five 50 ms gaps between six frames
    assert 0.24 <= elapsed < 1.0
    started = time.monotonic()
    whole = http.post("/api/chat", json={**CHAT, "stream": False}).json()
    assert whole["eval_count"] == 5
    assert time.monotonic() - started >= 0.24


def test_config_rejects_bad_values(http: httpx.Client) -> None:
    assert http.post("/_mock/config", json={"token_rate": -1}).status_code == 400
    assert http.post("/_mock/config", json={"response_tokens": 0}).status_code == 400
    assert http.post("/_mock/config", json={"speed": 1}).status_code == 400
