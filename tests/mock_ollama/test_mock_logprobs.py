"""`logprobs` and `top_logprobs` on `/api/chat` and `/api/generate` (WIRE.md trap 15)."""

from __future__ import annotations

from typing import Any

import httpx
import ollama
import pytest

from .frames import ndjson_frames

CHAT: dict[str, Any] = {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}]}
GENERATE: dict[str, Any] = {"model": "llama3.2", "prompt": "Tell me"}


def _text(frame: dict[str, Any]) -> str:
    text = frame["message"]["content"] if "message" in frame else frame["response"]
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize(("path", "body"), [("/api/chat", CHAT), ("/api/generate", GENERATE)])
def test_each_streamed_token_carries_its_logprobs(
    http: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    response = http.post(path, json={**body, "logprobs": True, "top_logprobs": 3})
    *tokens, final = ndjson_frames(response.content)
    assert "logprobs" not in final
    for frame in tokens:
        [entry] = frame["logprobs"]
        token = _text(frame)
        assert entry["token"] == token
        assert entry["bytes"] == list(token.encode())
        assert -3.0 <= entry["logprob"] < 0
        top = entry["top_logprobs"]
        assert len(top) == 3
        assert top[0] == {k: entry[k] for k in ("token", "logprob", "bytes")}
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert len({t["token"] for t in top}) == 3
    # Keys in Go's order: the logprobs follow `done`.
    raw_line = response.content.split(b"\n")[0]
    assert raw_line.index(b'"done":false') < raw_line.index(b'"logprobs"')


@pytest.mark.parametrize(("path", "body"), [("/api/chat", CHAT), ("/api/generate", GENERATE)])
def test_a_whole_answer_carries_every_token_and_no_alternatives_unless_asked(
    http: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    streamed = ndjson_frames(http.post(path, json={**body, "logprobs": True}).content)
    whole = http.post(path, json={**body, "logprobs": True, "stream": False}).json()
    entries = whole["logprobs"]
    assert [e["token"] for e in entries] == [_text(f) for f in streamed[:-1]]
    assert "".join(e["token"] for e in entries) == _text(whole)
    assert all("top_logprobs" not in e for e in entries)  # 0 alternatives: omitted
    assert [e for f in streamed[:-1] for e in f["logprobs"]] == entries


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_no_logprobs_unless_asked(http: httpx.Client, path: str) -> None:
    body = CHAT if path == "/api/chat" else GENERATE
    plain = ndjson_frames(http.post(path, json={**body, "top_logprobs": 5}).content)
    assert all("logprobs" not in frame for frame in plain)


@pytest.mark.parametrize("top", [21, -1])
def test_top_logprobs_out_of_range_is_a_400(http: httpx.Client, top: int) -> None:
    for path, body in (("/api/chat", CHAT), ("/api/generate", GENERATE)):
        response = http.post(path, json={**body, "logprobs": True, "top_logprobs": top})
        assert response.status_code == 400
        assert response.json() == {"error": "top_logprobs must be between 0 and 20"}


def test_the_ollama_client_reads_them(client: ollama.Client) -> None:
    answer = client.chat(model="llama3.2", messages=CHAT["messages"], logprobs=True, top_logprobs=2)
    assert answer.logprobs is not None
    assert "".join(entry.token for entry in answer.logprobs) == answer.message.content
    assert all(len(entry.top_logprobs or []) == 2 for entry in answer.logprobs)
