"""Discovery endpoints: `/`, version, tags, ps and show, checked with ollama-python and raw HTTP."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import ollama
import pytest

# Go RFC3339Nano with a non-UTC offset: fraction without trailing zeros, then ±hh:mm.
LOCAL_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?[+-]\d\d:\d\d$")


def test_root_answers_get_and_head(http: httpx.Client) -> None:
    got = http.get("/")
    assert got.status_code == 200
    assert got.text == "Ollama is running"
    assert got.headers["content-type"].startswith("text/plain")
    head = http.head("/")
    assert head.status_code == 200
    assert head.content == b""


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_version(http: httpx.Client, method: str) -> None:
    response = http.request(method, "/api/version")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    if method == "GET":
        assert response.content == b'{"version":"0.33.0"}'


def test_tags_lists_default_models_newest_first(http: httpx.Client) -> None:
    response = http.get("/api/tags")
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    models = response.json()["models"]
    names = [m["name"] for m in models]
    assert names[:2] == ["llama3.2:latest", "qwen2.5:7b"]
    assert {"acme/coder:1b", "all-minilm:latest", "nomic-embed-text:latest"} <= set(names)
    stamps = [datetime.fromisoformat(m["modified_at"]) for m in models]
    assert stamps == sorted(stamps, reverse=True)
    for model in models:
        assert model["model"] == model["name"]
        assert LOCAL_TIME.match(model["modified_at"]), model["modified_at"]
        assert model["modified_at"].endswith("-07:00")
        assert re.fullmatch(r"[0-9a-f]{64}", model["digest"])
        assert model["size"] > 0
        assert set(model["details"]) == {
            "parent_model",
            "format",
            "family",
            "families",
            "parameter_size",
            "quantization_level",
        }


def test_tags_answers_head(http: httpx.Client) -> None:
    head = http.head("/api/tags")
    assert (head.status_code, head.content) == (200, b"")
    assert http.head("/api/ps").status_code == 405


def test_tags_parse_with_ollama_client(client: ollama.Client) -> None:
    listed = client.list()
    by_name = {m.model: m for m in listed.models}
    llama = by_name["llama3.2:latest"]
    assert llama.details is not None
    assert llama.details.family == "llama"
    assert llama.details.parameter_size == "3.2B"
    assert llama.modified_at is not None
    assert llama.modified_at.utcoffset() == timedelta(hours=-7)
    assert by_name["all-minilm:latest"].details.family == "bert"  # type: ignore[union-attr]


def test_ps_is_empty_until_a_model_is_used(client: ollama.Client) -> None:
    assert client.ps().models == []
    client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    loaded = client.ps().models
    assert [m.model for m in loaded] == ["llama3.2:latest"]
    assert loaded[0].expires_at is not None
    remaining = loaded[0].expires_at - datetime.now(UTC)
    assert timedelta(minutes=4) < remaining <= timedelta(minutes=5)
    assert loaded[0].context_length == 4096
    assert loaded[0].size_vram == loaded[0].size


def test_keep_alive_zero_unloads(client: ollama.Client) -> None:
    client.generate(model="qwen2.5:7b", prompt="hello")
    assert [m.model for m in client.ps().models] == ["qwen2.5:7b"]
    reply = client.generate(model="qwen2.5:7b", prompt="", keep_alive=0)
    assert reply.done_reason == "unload"
    assert client.ps().models == []


def test_show_always_has_model_info(client: ollama.Client) -> None:
    shown = client.show("llama3.2")
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 131072
    assert shown.modelinfo["general.parameter_count"] > 3_000_000_000
    assert shown.capabilities == ["completion", "tools"]
    assert shown.details is not None
    assert shown.details.quantization_level == "Q4_K_M"
    assert shown.template
    assert shown.parameters


def test_show_capabilities_per_kind(client: ollama.Client) -> None:
    assert client.show("all-minilm").capabilities == ["embedding"]
    assert client.show("qwen3:8b").capabilities == ["completion", "tools", "thinking"]
    namespaced = client.show("acme/coder:1b")
    assert namespaced.details is not None
    assert namespaced.details.parameter_size == "1.0B"


def test_show_accepts_name_alias_and_ignores_case(http: httpx.Client) -> None:
    response = http.post("/api/show", json={"name": "LLAMA3.2:Latest"})
    assert response.status_code == 200
    assert response.json()["model_info"]["general.architecture"] == "llama"


def test_show_errors(http: httpx.Client, client: ollama.Client) -> None:
    missing = http.post("/api/show", json={})
    assert (missing.status_code, missing.json()) == (400, {"error": "model is required"})
    unknown = http.post("/api/show", json={"model": "foo"})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "model 'foo:latest' not found"})
    with pytest.raises(ollama.ResponseError) as raised:
        client.show("foo")
    assert raised.value.status_code == 404


def test_unknown_path_and_wrong_method_are_gin_plain_text(http: httpx.Client) -> None:
    unknown = http.get("/api/nothing-here")
    assert unknown.status_code == 404
    assert unknown.text == "404 page not found"
    assert unknown.headers["content-type"].startswith("text/plain")
    wrong = http.get("/api/chat")
    assert wrong.status_code == 405
    assert wrong.text == "405 method not allowed"
    assert http.post("/api/tags").status_code == 405
