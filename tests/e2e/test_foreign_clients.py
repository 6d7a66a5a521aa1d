"""Clients written by others, as their users configure them, against a real gateway: the
npm `openai` and `ollama` SDKs (Node.js), LiteLLM (both of its routes), LangChain's
ChatOllama and its `OpenAI` LLM's batch. Each is judged on the text it returns (the same
as the gateway's own answer to the same request, read raw), the usage it reports, and
the error classes it raises for a wrong key, a model outside the key's set and a rate
limit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import ollama
import openai
import pytest
from langchain_core.language_models import LanguageModelInput
from langchain_ollama import ChatOllama
from langchain_openai import OpenAI

from nz_core.keys import generate_key
from nz_core.limits import Limits
from tests.e2e import foreign
from tests.e2e.conftest import Deployment

CHAT = "llama3.2"
EMBED = "all-minilm"
HELLO = [{"role": "user", "content": "Say hello"}]
MOCK_TOKENS = 12  # the e2e mock's answer length


@dataclass(frozen=True)
class Keys:
    url: str
    key: str  # the chat and the embedding model
    narrow: str  # the embedding model only
    limited: str  # one request a minute
    wrong: str  # well-formed, but no key of the gateway


async def keys_for(deployment: Deployment) -> Keys:
    return Keys(
        url=deployment.url,
        key=await deployment.key(models=[CHAT, EMBED]),
        narrow=await deployment.key(models=[EMBED]),
        limited=await deployment.key(models=[CHAT], limits=Limits(rpm=1)),
        wrong=generate_key(),
    )


def raw(keys: Keys, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The gateway's own answer, read without any SDK."""
    response = httpx.post(
        keys.url + path, json=body, headers={"Authorization": f"Bearer {keys.key}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def raw_models(keys: Keys, path: str) -> Any:
    response = httpx.get(keys.url + path, headers={"Authorization": f"Bearer {keys.key}"})
    assert response.status_code == 200, response.text
    return response.json()


def assert_openai_error(seen: dict[str, Any] | None, kind: str, status: int, code: str) -> None:
    assert seen is not None, f"no {kind} was raised"
    assert seen["class"] == kind
    assert seen["is"] == [kind, "APIError"]
    assert (seen["status"], seen["code"]) == (status, code)


async def test_npm_openai_sdk(deployment: Deployment) -> None:
    keys = await keys_for(deployment)
    seen = foreign.report([*foreign.node_program(), "openai"], asdict(keys))

    chat = raw(keys, "/v1/chat/completions", {"model": CHAT, "messages": HELLO})
    assert seen["whole"] == {
        "object": "chat.completion",
        "content": chat["choices"][0]["message"]["content"],
        "finish_reason": "stop",
        "usage": chat["usage"],
    }
    assert seen["whole"]["usage"]["completion_tokens"] == MOCK_TOKENS
    streamed = seen["streamed"]
    assert streamed["content"] == chat["choices"][0]["message"]["content"]
    assert len(streamed["ids"]) == 1
    assert streamed["finish_reasons"] == ["stop"]
    assert streamed["usage"] == chat["usage"]

    completion = raw(keys, "/v1/completions", {"model": CHAT, "prompt": "Once", "max_tokens": 3})
    assert seen["completion"] == {
        "text": completion["choices"][0]["text"],
        "finish_reason": "length",
        "usage": completion["usage"],
    }
    assert seen["completion"]["usage"]["completion_tokens"] == 3
    embedded = raw(keys, "/v1/embeddings", {"model": EMBED, "input": ["a", "b"]})
    assert seen["embeddings"] == {"count": 2, "dimensions": 384, "usage": embedded["usage"]}
    assert seen["models"] == [m["id"] for m in raw_models(keys, "/v1/models")["data"]]
    assert sorted(seen["models"]) == ["all-minilm:latest", "llama3.2:latest"]

    errors = seen["errors"]
    assert_openai_error(errors["wrong_key"], "AuthenticationError", 401, "invalid_api_key")
    assert_openai_error(errors["wrong_key_streamed"], "AuthenticationError", 401, "invalid_api_key")
    assert_openai_error(
        errors["model_not_allowed"], "PermissionDeniedError", 403, "model_not_allowed"
    )
    assert seen["limited_first"] == chat["choices"][0]["message"]["content"]
    assert_openai_error(errors["rate_limited"], "RateLimitError", 429, "rpm_exceeded")
    assert 1 <= int(errors["rate_limited"]["retry_after"]) <= 60


async def test_npm_ollama_client(deployment: Deployment) -> None:
    keys = await keys_for(deployment)
    seen = foreign.report([*foreign.node_program(), "ollama"], asdict(keys))

    chat = raw(keys, "/api/chat", {"model": CHAT, "messages": HELLO, "stream": False})
    assert seen["whole"] == {
        "content": chat["message"]["content"],
        "done": True,
        "done_reason": "stop",
        "eval_count": MOCK_TOKENS,
        "prompt_eval_count": chat["prompt_eval_count"],
    }
    assert seen["streamed"] == {
        "content": chat["message"]["content"],
        "done": True,
        "eval_count": MOCK_TOKENS,
        "prompt_eval_count": chat["prompt_eval_count"],
    }
    generated = raw(
        keys,
        "/api/generate",
        {"model": CHAT, "prompt": "Once", "options": {"num_predict": 3}, "stream": False},
    )
    assert seen["generated"] == {
        "response": generated["response"],
        "done_reason": "length",
        "eval_count": 3,
    }
    embedded = raw(keys, "/api/embed", {"model": EMBED, "input": ["a", "b"]})
    assert seen["embed"] == {
        "count": 2,
        "dimensions": 384,
        "prompt_eval_count": embedded["prompt_eval_count"],
    }
    assert seen["models"] == [m["name"] for m in raw_models(keys, "/api/tags")["models"]]
    assert sorted(seen["models"]) == ["all-minilm:latest", "llama3.2:latest"]

    # ollama-js raises one class for every refusal; the status tells them apart.
    errors = seen["errors"]
    for case, status in (
        ("wrong_key", 401),
        ("wrong_key_streamed", 401),
        ("model_not_allowed", 403),
        ("rate_limited", 429),
    ):
        assert errors[case] is not None, f"{case}: nothing was raised"
        assert errors[case]["class"] == errors[case]["name"] == "ResponseError", case
        assert errors[case]["status_code"] == status, case
    assert errors["model_not_allowed"]["error"] == (
        "The model does not exist or this key may not use it."
    )
    assert seen["limited_first"] == chat["message"]["content"]


# LiteLLM takes seconds to import and the wire does not depend on the storage mode.
@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_litellm(deployment: Deployment) -> None:
    keys = await keys_for(deployment)
    python = foreign.litellm_python()
    # Without it LiteLLM fetches its model price list from the internet at import.
    seen = foreign.report(
        [str(python), str(foreign.LITELLM / "client.py")],
        asdict(keys),
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )

    chat = raw(keys, "/v1/chat/completions", {"model": CHAT, "messages": HELLO})
    content = chat["choices"][0]["message"]["content"]
    usage = {k: chat["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert usage["completion_tokens"] == MOCK_TOKENS
    for route in ("openai", "ollama_chat"):
        answers = seen[route]
        assert answers["whole"] == {"content": content, "finish_reason": "stop", "usage": usage}
        assert answers["streamed"] == {"content": content, "usage": usage}, route
        errors = answers["errors"]
        assert all(errors.values()), f"{route}: something was not refused: {errors}"
        assert errors["wrong_key"]["class"] == "AuthenticationError", route
        assert "openai.AuthenticationError" in errors["wrong_key"]["is"], route
        assert errors["rate_limited"]["class"] == "RateLimitError", route
        assert "openai.RateLimitError" in errors["rate_limited"]["is"], route
        assert (errors["wrong_key"]["status_code"], errors["rate_limited"]["status_code"]) == (
            401,
            429,
        )
        assert errors["model_not_allowed"]["status_code"] == 403, route
    # LiteLLM's own mapping: its OpenAI route has no case for 403 and raises its generic
    # APIError; its Ollama route raises PermissionDeniedError.
    assert seen["openai"]["errors"]["model_not_allowed"]["class"] == "APIError"
    assert seen["ollama_chat"]["errors"]["model_not_allowed"]["class"] == "PermissionDeniedError"
    assert seen["limited_first"] == content
    embedded = raw(keys, "/v1/embeddings", {"model": EMBED, "input": ["a", "b"]})
    assert seen["embedding"] == {
        "count": 2,
        "dimensions": 384,
        "prompt_tokens": embedded["usage"]["prompt_tokens"],
    }


@contextmanager
def chat_ollama(keys: Keys, key: str) -> Iterator[ChatOllama]:
    chat = ChatOllama(
        base_url=keys.url, model=CHAT, client_kwargs={"headers": {"Authorization": f"Bearer {key}"}}
    )
    try:
        yield chat
    finally:
        chat._client._client.close()  # LangChain never closes the clients it builds


@contextmanager
def openai_llm(keys: Keys, key: str) -> Iterator[OpenAI]:
    llm = OpenAI(base_url=keys.url + "/v1", api_key=key, model=CHAT, max_retries=0)  # type: ignore[arg-type]
    try:
        yield llm
    finally:
        llm.client._client.close()


async def test_langchain_chat_ollama(deployment: Deployment) -> None:
    keys = await keys_for(deployment)
    reference = raw(keys, "/api/chat", {"model": CHAT, "messages": HELLO, "stream": False})
    with chat_ollama(keys, keys.key) as chat:
        answer = chat.invoke("Say hello")
        streamed = list(chat.stream("Say hello"))
    assert answer.content == reference["message"]["content"]
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == reference["prompt_eval_count"]
    assert answer.usage_metadata["output_tokens"] == MOCK_TOKENS
    assert "".join(str(chunk.content) for chunk in streamed) == answer.content
    streamed_usage = [c.usage_metadata for c in streamed if c.usage_metadata]
    assert [usage["output_tokens"] for usage in streamed_usage] == [MOCK_TOKENS]

    with chat_ollama(keys, keys.limited) as limited:
        assert limited.invoke("Say hello").content == answer.content
        with pytest.raises(ollama.ResponseError) as raised:
            limited.invoke("Say hello")
        assert raised.value.status_code == 429
    for key, status in ((keys.wrong, 401), (keys.narrow, 403)):
        with chat_ollama(keys, key) as refused, pytest.raises(ollama.ResponseError) as raised:
            refused.invoke("Say hello")
        assert raised.value.status_code == status


async def test_langchain_openai_batch(deployment: Deployment) -> None:
    """LangChain's `OpenAI` sends a batch as one /v1/completions request with a list of
    prompts; each prompt gets its own answer, in order."""
    keys = await keys_for(deployment)
    prompts = ["Once upon a time", "The gateway", "In the morning"]
    inputs: list[LanguageModelInput] = list(prompts)
    alone = [raw(keys, "/v1/completions", {"model": CHAT, "prompt": p}) for p in prompts]
    texts = [answer["choices"][0]["text"] for answer in alone]
    assert len(set(texts)) == len(texts)  # so an answer in the wrong place shows

    with openai_llm(keys, keys.key) as llm:
        assert llm.batch(inputs) == texts
        result = llm.generate(prompts)
    assert [generation[0].text for generation in result.generations] == texts
    assert result.llm_output is not None
    assert result.llm_output["token_usage"] == {
        "prompt_tokens": sum(a["usage"]["prompt_tokens"] for a in alone),
        "completion_tokens": MOCK_TOKENS * len(prompts),
        "total_tokens": sum(a["usage"]["total_tokens"] for a in alone),
    }

    with openai_llm(keys, keys.limited) as limited:
        assert limited.invoke(prompts[0]) == texts[0]
        with pytest.raises(openai.RateLimitError):
            limited.batch(inputs)
    for key, error in (
        (keys.wrong, openai.AuthenticationError),
        (keys.narrow, openai.PermissionDeniedError),
    ):
        with openai_llm(keys, key) as refused, pytest.raises(error):
            refused.batch(inputs)
