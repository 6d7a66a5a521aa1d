"""`/api/generate`: frames, `context`, raw prompts, special cases and errors."""

from __future__ import annotations

from typing import Any

import httpx
import ollama
import pytest

from .frames import UTC_TIME, ndjson_frames


def _generate(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/api/generate", json={"model": "llama3.2", "prompt": "Tell me", **body})


def test_streamed_frames_and_final_context(http: httpx.Client) -> None:
    response = _generate(http)
    assert response.headers["content-type"] == "application/x-ndjson"
    *tokens, final = ndjson_frames(response.content)
    assert len(tokens) == 24
    for frame in tokens:
        assert frame["done"] is False
        assert frame["response"]
        assert UTC_TIME.match(frame["created_at"])
        assert "message" not in frame
    assert final["response"] == ""
    assert final["done_reason"] == "stop"
    assert final["eval_count"] == 24
    # 1 + 4 (template) + ceil(7 / 4)
    assert final["prompt_eval_count"] == 7
    assert final["context"] == [int(i) for i in final["context"]]
    assert len(final["context"]) == final["prompt_eval_count"] + final["eval_count"]


def test_raw_prompt_has_no_context_and_no_template_tokens(http: httpx.Client) -> None:
    final = _generate(http, raw=True, stream=False).json()
    assert "context" not in final
    assert final["prompt_eval_count"] == 2  # ceil(7 / 4)


def test_system_prompt_counts(http: httpx.Client) -> None:
    final = _generate(http, system="x" * 20, stream=False).json()
    assert final["prompt_eval_count"] == 7 + 4 + 5


def test_raw_refuses_system(http: httpx.Client) -> None:
    response = _generate(http, raw=True, system="be brief")
    assert response.status_code == 400
    assert response.json() == {"error": "raw mode does not support template, system, or context"}


def test_num_predict(http: httpx.Client) -> None:
    *tokens, final = ndjson_frames(_generate(http, options={"num_predict": 3}).content)
    assert (len(tokens), final["eval_count"], final["done_reason"]) == (3, 3, "length")


def test_with_the_ollama_client(client: ollama.Client) -> None:
    whole = client.generate(model="llama3.2", prompt="Tell me")
    assert whole.response
    assert whole.context
    parts = list(client.generate(model="llama3.2", prompt="Tell me", stream=True))
    assert "".join(p.response or "" for p in parts) == whole.response
    assert parts[-1].done_reason == "stop"


def test_thinking_field(http: httpx.Client) -> None:
    body = {"model": "qwen3:8b", "prompt": "Tell me", "think": True}
    *tokens, _ = ndjson_frames(http.post("/api/generate", json=body).content)
    thinking = [f for f in tokens if "thinking" in f]
    assert thinking
    assert all(f["response"] == "" for f in thinking)
    whole = http.post("/api/generate", json={**body, "stream": False}).json()
    assert whole["thinking"] == "".join(f["thinking"] for f in thinking)


@pytest.mark.parametrize(
    ("keep_alive", "reason"), [(None, "load"), (0, "unload"), ("0s", "unload"), ("5m", "load")]
)
def test_empty_prompt_loads_or_unloads(http: httpx.Client, keep_alive: object, reason: str) -> None:
    body: dict[str, Any] = {"model": "llama3.2"}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    response = http.post("/api/generate", json=body)
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    answer = response.json()
    assert answer["done_reason"] == reason
    assert answer["response"] == ""
    assert answer["done"] is True


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"prompt": "x"}, 404, "model '' not found"),
        ({"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        (
            {"model": "nomic-embed-text", "prompt": "x"},
            400,
            '"nomic-embed-text" does not support generate',
        ),
        ({"model": "llama3.2", "keep_alive": "soon"}, 400, 'time: invalid duration "soon"'),
    ],
)
def test_errors(http: httpx.Client, body: dict[str, Any], status: int, error: str) -> None:
    response = http.post("/api/generate", json=body)
    assert (response.status_code, response.json()) == (status, {"error": error})
