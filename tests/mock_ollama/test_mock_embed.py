"""`/api/embed` and the legacy `/api/embeddings`."""

from __future__ import annotations

import math

import httpx
import ollama
import pytest


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def test_embed_one_and_many(client: ollama.Client) -> None:
    one = client.embed(model="all-minilm", input="hello world")
    assert len(one.embeddings) == 1
    assert len(one.embeddings[0]) == 384
    assert _norm(list(one.embeddings[0])) == pytest.approx(1.0, abs=1e-5)
    many = client.embed(model="all-minilm", input=["hello world", "goodbye"])
    assert len(many.embeddings) == 2
    assert list(many.embeddings[0]) == list(one.embeddings[0])
    assert list(many.embeddings[1]) != list(one.embeddings[0])
    # ceil(11 / 4) + 2 and ceil(7 / 4) + 2
    assert many.prompt_eval_count == 5 + 4


def test_embed_response_shape(http: httpx.Client) -> None:
    response = http.post("/api/embed", json={"model": "all-minilm", "input": "hi"})
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert list(body) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    assert body["model"] == "all-minilm"


def test_dimensions_truncate_and_renormalise(http: httpx.Client) -> None:
    full = http.post("/api/embed", json={"model": "all-minilm", "input": "hi"}).json()
    cut = http.post(
        "/api/embed", json={"model": "all-minilm", "input": "hi", "dimensions": 64}
    ).json()
    vector = cut["embeddings"][0]
    assert len(vector) == 64
    assert _norm(vector) == pytest.approx(1.0, abs=1e-5)
    scale = _norm(full["embeddings"][0][:64])
    assert vector[0] == pytest.approx(full["embeddings"][0][0] / scale, abs=1e-6)


def test_chat_models_embed_too(http: httpx.Client) -> None:
    body = http.post("/api/embed", json={"model": "llama3.2", "input": "hi"}).json()
    assert len(body["embeddings"][0]) == 3072


def test_empty_input_loads_only(http: httpx.Client) -> None:
    body = http.post("/api/embed", json={"model": "all-minilm", "input": ""}).json()
    assert body == {"model": "all-minilm", "embeddings": []}


@pytest.mark.parametrize("bad", [3, [1, 2], {"a": 1}, ["ok", 2]])
def test_invalid_input_type(http: httpx.Client, bad: object) -> None:
    response = http.post("/api/embed", json={"model": "all-minilm", "input": bad})
    assert (response.status_code, response.json()) == (400, {"error": "invalid input type"})


def test_unknown_model(http: httpx.Client) -> None:
    for path in ("/api/embed", "/api/embeddings"):
        response = http.post(path, json={"model": "nope", "input": "x", "prompt": "x"})
        assert response.status_code == 404
        assert response.json() == {"error": 'model "nope" not found, try pulling it first'}


def test_legacy_embeddings(client: ollama.Client, http: httpx.Client) -> None:
    legacy = client.embeddings(model="nomic-embed-text", prompt="hello world")
    assert len(legacy.embedding) == 768
    modern = client.embed(model="nomic-embed-text", input="hello world")
    assert list(legacy.embedding) == list(modern.embeddings[0])
    empty = http.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": ""})
    assert empty.json() == {"embedding": []}
