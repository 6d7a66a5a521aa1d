"""The real `openai` SDK, sync and async, against the gateway (SPEC §5, WIRE.md §3)."""

from __future__ import annotations

import json

import openai
import pytest

from nz_core.scopes import Scope
from tests.e2e.conftest import Deployment

CHAT = "llama3.2"
EMBED = "all-minilm"


def client(deployment: Deployment, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=deployment.url + "/v1", api_key=key, max_retries=0)


def async_client(deployment: Deployment, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=deployment.url + "/v1", api_key=key, max_retries=0)


async def test_chat_whole_and_streamed_with_usage(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT])
    with client(deployment, key) as sdk:
        whole = sdk.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Say hello"}]
        )
        assert whole.object == "chat.completion"
        assert whole.choices[0].message.role == "assistant"
        assert whole.choices[0].message.content
        assert whole.choices[0].finish_reason == "stop"
        assert whole.usage is not None
        assert whole.usage.completion_tokens == 12
        assert whole.usage.prompt_tokens > 0

        chunks = list(
            sdk.chat.completions.create(
                model=CHAT,
                messages=[{"role": "user", "content": "Say hello"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content  # the mock answers deterministically
    assert len({c.id for c in chunks}) == 1
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    finish = [reason for reason in finish if reason]
    assert finish == ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        12,
    )


async def test_async_client_streams_and_caps_tokens(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT])
    async with async_client(deployment, key) as sdk:
        stream = await sdk.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "count"}], stream=True, max_tokens=3
        )
        deltas = [chunk async for chunk in stream]
        whole = await sdk.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "count"}], max_completion_tokens=4
        )
    pieces = [c.choices[0].delta.content for c in deltas if c.choices]
    pieces = [piece for piece in pieces if piece]
    assert len(pieces) == 3
    assert deltas[-1].choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 4
    assert whole.choices[0].finish_reason == "length"


async def test_tool_calls_round_trip(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT])
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    with client(deployment, key) as sdk:
        first = sdk.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Weather in Tokyo?"}], tools=tools
        )
        call = first.choices[0].message.tool_calls
        assert first.choices[0].finish_reason == "tool_calls"
        assert call is not None
        assert call[0].function.name == "get_weather"
        assert "city" in json.loads(call[0].function.arguments)
        second = sdk.chat.completions.create(
            model=CHAT,
            tools=tools,
            messages=[
                {"role": "user", "content": "Weather in Tokyo?"},
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call[0].id, "content": '{"temp": 21}'},
            ],
        )
    assert second.choices[0].message.content
    assert second.choices[0].finish_reason == "stop"


async def test_legacy_completions(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT])
    with client(deployment, key) as sdk:
        whole = sdk.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=5)
        streamed = list(
            sdk.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=5, stream=True)
        )
    assert whole.object == "text_completion"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 5
    text = "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)
    assert text == whole.choices[0].text


async def test_embeddings_base64_by_default_and_float(deployment: Deployment) -> None:
    key = await deployment.key(models=[EMBED])
    with client(deployment, key) as sdk:
        default = sdk.embeddings.create(model=EMBED, input=["first text", "second text"])
        floats = sdk.embeddings.create(model=EMBED, input="first text", encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 384
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
    assert default.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError) as info:
        client(deployment, key).embeddings.create(model=EMBED, input=[[1, 2, 3]])
    assert "token" in str(info.value).lower()


async def test_model_list_is_the_effective_set(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT, "acme/coder:1b", "not-installed"])
    with client(deployment, key) as sdk:
        listed = sorted(model.id for model in sdk.models.list())
        assert listed == ["acme/coder:1b", "llama3.2:latest"]
        assert sdk.models.retrieve("acme/coder:1b").owned_by == "acme"
        assert sdk.models.retrieve("llama3.2").id == "llama3.2"
        assert sdk.models.retrieve("library/llama3.2").id == "library/llama3.2"
        with pytest.raises(openai.PermissionDeniedError):
            sdk.models.retrieve("mistral")
    none = await deployment.key()
    with client(deployment, none) as sdk:
        assert list(sdk.models.list()) == []


async def test_refusals_map_to_the_sdk_exceptions(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT], scopes=frozenset({Scope.EMBEDDINGS}))
    message = [{"role": "user", "content": "hi"}]
    with client(deployment, "nz_" + "x" * 52) as sdk, pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model=CHAT, messages=message)  # type: ignore[arg-type]
    with client(deployment, key) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as scope:
            sdk.chat.completions.create(model=CHAT, messages=message)  # type: ignore[arg-type]
        assert scope.value.code == "scope_missing"
    allowed = await deployment.key(models=[CHAT])
    with client(deployment, allowed) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as model:
            sdk.chat.completions.create(model="mistral", messages=message)  # type: ignore[arg-type]
        assert model.value.code == "model_not_allowed"
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.chat.completions.create(model=CHAT, messages=[])
        assert bad.value.status_code == 400
        assert bad.value.response.headers["x-request-id"] == bad.value.request_id
