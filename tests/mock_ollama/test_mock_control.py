"""The `/_mock/*` control API: counters, reset, models, generation settings and the
recorded request bodies."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

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


# -- /_mock/requests: the raw bodies, for the parser-differential test (SPEC §4.9) --------


def _received(http: httpx.Client, after: int | None = None) -> dict[str, Any]:
    params = {} if after is None else {"after": str(after)}
    response = http.get("/_mock/requests", params=params)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _bodies(entries: list[dict[str, Any]]) -> list[tuple[str, str, bytes | None]]:
    return [
        (e["method"], e["path"], None if e["body"] is None else base64.b64decode(e["body"]))
        for e in entries
    ]


def test_requests_records_every_body_byte_for_byte(http: httpx.Client) -> None:
    # What a Go decoder must see: duplicate keys, case variants, escapes, trailing data
    # and bytes that are not UTF-8 are kept exactly as sent, whatever the mock answers.
    hostile = b'{"model":"llama3.2","Model":"qwen2.5:7b","\\u212aeep_alive":-1}{"x":1}'
    not_utf8 = b'{"model":"llama3.2","prompt":"\xff\xfe"}'
    http.post("/api/chat", content=hostile)
    http.post("/api/generate", content=not_utf8, headers={"Content-Type": "text/plain"})
    http.post("/api/embed", json={"model": "all-minilm", "input": "x"})
    http.get("/api/tags")
    http.get("/_mock/stats")  # the control API is never recorded
    http.post("/_mock/faults", json={})
    received = _received(http)
    assert _bodies(received["requests"]) == [
        ("POST", "/api/chat", hostile),
        ("POST", "/api/generate", not_utf8),
        ("POST", "/api/embed", b'{"model":"all-minilm","input":"x"}'),
        ("GET", "/api/tags", b""),
    ]
    assert received["capacity"] == 1000
    assert [e["size"] for e in received["requests"]] == [len(hostile), len(not_utf8), 34, 0]
    seqs = [e["seq"] for e in received["requests"]]
    assert seqs == list(range(received["recorded"] - 3, received["recorded"] + 1))


def test_requests_reads_no_body_its_handler_would_not(http: httpx.Client) -> None:
    data = b"blob bytes " * 1000
    digest = hashlib.sha256(data).hexdigest()
    # The blob handler streams its body: it must still see all of it.
    assert http.post(f"/api/blobs/sha256:{digest}", content=data).status_code == 201
    assert http.post("/no/such/path", content=b'{"model":"x"}').status_code == 404
    assert http.request("PUT", "/api/chat", content=b"{}").status_code == 405
    huge = b'{"model":"llama3.2","prompt":"' + b"x" * (1 << 20) + b'"}'
    assert http.post("/api/generate", content=huge).status_code == 200
    entries = _received(http)["requests"]
    assert _bodies(entries) == [
        ("POST", f"/api/blobs/sha256:{digest}", None),
        ("POST", "/no/such/path", None),
        ("PUT", "/api/chat", None),
        ("POST", "/api/generate", None),  # read, but too large to keep
    ]
    assert [e["size"] for e in entries] == [None, None, None, len(huge)]


def test_requests_after_a_mark_and_after_a_reset(http: httpx.Client) -> None:
    http.post("/api/show", json={"model": "llama3.2"})
    mark = _received(http)["recorded"]
    http.post("/api/show", json={"model": "qwen2.5:7b"})
    later = _received(http, after=mark)["requests"]
    assert _bodies(later) == [("POST", "/api/show", b'{"model":"qwen2.5:7b"}')]
    assert later[0]["seq"] == mark + 1
    assert _received(http, after=mark + 1)["requests"] == []
    assert http.get("/_mock/requests", params={"after": "x"}).status_code == 400
    # A reset forgets the bodies; seq keeps counting, so an older mark stays meaningful.
    http.post("/_mock/reset")
    assert _received(http)["requests"] == []
    http.get("/api/version")
    (entry,) = _received(http, after=mark)["requests"]
    assert (entry["path"], entry["seq"]) == ("/api/version", mark + 2)


def test_requests_keeps_only_the_last_thousand(http: httpx.Client) -> None:
    for i in range(1003):
        http.post("/api/show", content=b'{"model":"m%d"}' % i)
    received = _received(http)
    entries = received["requests"]
    assert len(entries) == 1000
    assert base64.b64decode(entries[0]["body"]) == b'{"model":"m3"}'
    assert base64.b64decode(entries[-1]["body"]) == b'{"model":"m1002"}'
    assert entries[-1]["seq"] == received["recorded"]
