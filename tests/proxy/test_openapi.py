"""The OpenAPI document: complete, self-consistent, and as strict as the code it describes
(the end-to-end check is tests/e2e/test_schemathesis.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from nz_proxy.errors import (
    BudgetExhausted,
    GatewayError,
    InvalidApiKey,
    InvalidRequest,
    ModelNotAllowed,
    Surface,
    UpstreamUnavailable,
    render,
)
from nz_proxy.openapi import openapi_document
from nz_proxy.wire import conform
from nz_proxy.wire.fields import Options
from nz_proxy.wire.ollama import OllamaChatRequest, OllamaErrorBody
from nz_proxy.wire.openai import OpenAIErrorBody

DOCUMENT = openapi_document()
OPERATIONS = {
    (method.upper(), path): operation
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
}


def refs(value: object) -> set[str]:
    if isinstance(value, dict):
        own = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
        return own.union(*(refs(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(refs(item) for item in value))
    return set()


def test_every_route_of_the_api_is_documented() -> None:
    assert set(OPERATIONS) == {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model}"),
        ("POST", "/api/chat"),
        ("POST", "/api/generate"),
        ("POST", "/api/embed"),
        ("POST", "/api/embeddings"),
        ("GET", "/api/tags"),
        ("GET", "/api/ps"),
        ("POST", "/api/show"),
        ("GET", "/api/version"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    }


def test_every_reference_resolves() -> None:
    names = set(DOCUMENT["components"]["schemas"])
    assert {ref.removeprefix("#/components/schemas/") for ref in refs(DOCUMENT)} <= names


@pytest.mark.parametrize(("method", "path"), sorted(OPERATIONS))
def test_api_operations_need_a_key_and_answer_errors_in_their_surfaces_shape(
    method: str, path: str
) -> None:
    operation = OPERATIONS[method, path]
    if not path.startswith(("/v1/", "/api/")):
        assert "security" not in operation
        return
    assert operation["security"] == [{"BearerAuth": []}, {"ApiKeyHeader": []}]
    shape = "OpenAIErrorBody" if path.startswith("/v1/") else "OllamaErrorBody"
    errors = {status: r for status, r in operation["responses"].items() if status >= "400"}
    assert {"401", "429", "502", "503", "504"} <= set(errors)
    for response in errors.values():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{shape}"}


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("bad", param="model"),
        InvalidApiKey(),
        ModelNotAllowed(),
        BudgetExhausted("day", retry_after_ms=None),
        UpstreamUnavailable(),
    ],
)
def test_rendered_errors_have_the_documented_shapes(error: GatewayError) -> None:
    msgspec.json.decode(render(error, Surface.OPENAI), type=OpenAIErrorBody, strict=True)
    msgspec.json.decode(render(error, Surface.OLLAMA), type=OllamaErrorBody, strict=True)


def test_bounds_that_litestar_would_drop_are_in_the_document() -> None:
    properties = DOCUMENT["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    temperature: dict[str, Any] = properties["temperature"]["anyOf"][0]
    assert (temperature["minimum"], temperature["maximum"]) == (0, 2)
    keep_alive = properties["keep_alive"]["anyOf"][0]["anyOf"][1]
    assert keep_alive["pattern"].startswith("^")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "options": {"num_ctx": "big"}}, "options.num_ctx"),
        ({"model": "m", "messages": [{"role": "user", "images": ["not base64!"]}]}, None),
        ({"model": "m", "keep_alive": "5 minutes"}, "keep_alive"),
        ({"model": "m", "think": "hard"}, "think"),
        ({"model": "m", "format": "xml"}, "format"),
        ({"model": "m", "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_conform_refuses_with_the_offending_field(body: dict[str, Any], param: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        conform(body, OllamaChatRequest)
    assert info.value.param == (param or "messages[0].images[0]")
    assert info.value.status == 400
    assert "regex" not in info.value.message


def test_conform_accepts_what_ollama_clients_send() -> None:
    conform(
        {
            "model": "llama3.2",
            "messages": [
                {"role": "user", "content": "hi", "images": ["iVBORw0KGgo="]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
                },
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "stream": False,
            "format": {"type": "object"},
            "options": {"temperature": 0.1, "num_predict": 3, "stop": ["\n"], "unknown": 1},
            "keep_alive": "10m",
            "think": "low",
        },
        OllamaChatRequest,
    )
    conform({"seed": None, "mirostat": 0}, Options, "options")
