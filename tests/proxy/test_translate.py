"""OpenAI ⇄ Ollama translation: request mapping, validation, response and stream shapes.

The OpenAI side is checked against the real ``openai`` SDK: its pydantic models, and
end to end through an ``OpenAI`` client whose transport answers with our bytes.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Iterator
from typing import Any

import httpx2
import msgspec
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from nz_proxy.errors import InvalidRequest
from nz_proxy.translation.framing import SSE_DONE
from nz_proxy.translation.native import (
    apply_completion_cap,
    prompt_text_bytes,
    requested_completion_cap,
)
from nz_proxy.translation.replies import (
    chat_response,
    completion_response,
    embeddings_response,
    model_object,
    models_list,
    new_completion_id,
)
from nz_proxy.translation.requests import (
    chat_request,
    completion_request,
    embeddings_request,
    include_usage,
)
from nz_proxy.translation.streams import (
    ChatStream,
    CompletionStream,
    NativeStreamTap,
    native_error_line,
)
from tests.sse import SseParser
from tests.strategies import (
    chat_fields,
    conversations,
    embedding_batches,
    fuzzed_messages,
    json_objects,
    json_values,
    model_names,
    native_chat_streams,
    native_generate_streams,
    positive_ints,
    unicode_text,
)

USER: Any = {"role": "user", "content": "hi"}  # Any: also passed to the typed SDK
BASE: dict[str, Any] = {"model": "llama3.2", "messages": [USER]}
# A request using every mapped field validly, for fuzzing one field at a time.
FULL: dict[str, Any] = {
    **BASE,
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_tokens": 50,
    "max_completion_tokens": 40,
    "temperature": 0.5,
    "top_p": 0.9,
    "frequency_penalty": 0.1,
    "presence_penalty": -0.1,
    "seed": 7,
    "stop": ["\n\n"],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "auto",
    "response_format": {"type": "json_object"},
    "reasoning_effort": "low",
    "options": {"num_ctx": 4096},
    "keep_alive": "5m",
    "n": 1,
    "user": "u-1",
}
ID = "chatcmpl-abc123"
CREATED = 1_700_000_000
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def chat(**fields: Any) -> dict[str, Any]:
    return chat_request({**BASE, **fields})


def invalid(call: Any, *args: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        call(*args)
    return info.value


def param_root(param: str) -> str:
    return re.split(r"[.\[]", param, maxsplit=1)[0]


def sse_payloads(body: bytes) -> list[str]:
    return SseParser().feed(body)


def sse_chunks(body: bytes) -> list[dict[str, Any]]:
    payloads = sse_payloads(body)
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


# --------------------------------------------------------------------------- SDK harness


class Upstream:
    """Answers the SDK's requests with whatever body a test sets; records requests."""

    def __init__(self) -> None:
        self.body = b""
        self.content_type = "text/event-stream"
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(json.loads(request.content) if request.content else {})
        return httpx2.Response(200, content=self.body, headers={"content-type": self.content_type})

    def answer(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type


@pytest.fixture(scope="module")
def sdk() -> Iterator[tuple[openai.OpenAI, Upstream]]:
    upstream = Upstream()
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(upstream)),
        max_retries=0,
    )
    yield client, upstream
    client.close()


# --------------------------------------------------------------------------- chat requests


def test_minimal_chat_request_sets_stream_and_nothing_else() -> None:
    assert chat() == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }
    assert chat(stream=True)["stream"] is True
    assert chat(stream=None)["stream"] is False


def test_full_chat_request_mapping() -> None:
    native = chat_request(FULL)
    assert native == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "tools": FULL["tools"],
        "options": {
            "num_ctx": 4096,
            "num_predict": 40,
            "temperature": 0.5,
            "top_p": 0.9,
            "frequency_penalty": 0.1,
            "presence_penalty": -0.1,
            "seed": 7,
            "stop": ["\n\n"],
        },
        "keep_alive": "5m",
        "format": "json",
        "think": "low",
    }
    assert include_usage(FULL) is True
    assert include_usage(BASE) is False


@given(args=json_objects)
def test_tool_call_arguments_round_trip(args: dict[str, Any]) -> None:
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "f", "arguments": json.dumps(args)},
            }
        ],
    }
    native = chat(messages=[USER, assistant])
    native_call = native["messages"][-1]["tool_calls"][0]
    assert native_call == {"id": "call_1", "function": {"name": "f", "arguments": args}}

    # Back again, non-streamed and streamed: a JSON string that decodes to the same object.
    reply = {"message": {"role": "assistant", "content": "", "tool_calls": [native_call]}}
    body = chat_response({**reply, "done": True}, model="m", completion_id=ID, created=CREATED)
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "call_1"
    assert json.loads(call["function"]["arguments"]) == args

    stream = ChatStream(model="m", completion_id=ID, created=CREATED, include_usage=False)
    chunks = sse_chunks(stream.feed({**reply, "done": False}) + stream.feed({"done": True}))
    streamed = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert json.loads(streamed["function"]["arguments"]) == args


def test_tool_call_arguments_edge_cases() -> None:
    def arguments(raw: Any) -> Any:
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": raw}}
        message = {"role": "assistant", "content": "", "tool_calls": [call]}
        return chat(messages=[USER, message])["messages"][-1]["tool_calls"][0]["function"]

    assert arguments("")["arguments"] == {}
    assert arguments({"already": "object"})["arguments"] == {"already": "object"}
    for bad in ("{not json", "[1, 2]", "3", "null", 5):
        error = invalid(arguments, bad)
        assert error.message == "invalid tool call arguments"
        assert error.param == "messages[1].tool_calls[0].function.arguments"


def _group_size(message: dict[str, Any]) -> int:
    content = message.get("content")
    return max(len(content), 1) if isinstance(content, list) else 1


def _expected_tool_name(conversation: list[dict[str, Any]], i: int) -> str | None:
    message = conversation[i]
    if message.get("name"):
        return str(message["name"])
    for earlier in reversed(conversation[:i]):
        for call in reversed(earlier.get("tool_calls") or []):
            if call["id"] == message["tool_call_id"]:
                return str(call["function"]["name"])
    return None


@given(conversation=conversations())
def test_tool_call_id_becomes_tool_name(conversation: list[dict[str, Any]]) -> None:
    native = chat(messages=conversation)["messages"]
    assert len(native) == sum(_group_size(m) for m in conversation)
    position = 0
    for i, message in enumerate(conversation):
        group = native[position : position + _group_size(message)]
        position += len(group)
        role = "system" if message["role"] == "developer" else message["role"]
        assert {m["role"] for m in group} == {role}
        content = message["content"]
        texts = [p["text"] for p in content] if isinstance(content, list) else [content or ""]
        assert [m["content"] for m in group] == (texts or [""])
        if message["role"] == "tool":
            expected = _expected_tool_name(conversation, i)
            for m in group:
                assert m.get("tool_name") == expected
                assert m["tool_call_id"] == message["tool_call_id"]
        else:
            assert all("tool_name" not in m for m in group)
        if message.get("tool_calls"):
            assert [c["id"] for c in group[-1]["tool_calls"]] == [
                c["id"] for c in message["tool_calls"]
            ]


def test_tool_name_lookup_uses_the_latest_earlier_call_only() -> None:
    def assistant(*calls: tuple[str, str]) -> dict[str, Any]:
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": i, "type": "function", "function": {"name": n, "arguments": "{}"}}
                for i, n in calls
            ],
        }

    def tool(call_id: str, **extra: str) -> dict[str, Any]:
        return {"role": "tool", "content": "r", "tool_call_id": call_id, **extra}

    messages = chat(
        messages=[
            USER,
            tool("c1"),  # nothing earlier: no tool_name
            assistant(("c1", "first"), ("c2", "other")),
            tool("c1"),
            assistant(("c1", "second")),
            tool("c1"),
            tool("c2"),
            tool("c1", name="explicit"),
            tool("c9"),
            assistant(("c9", "too_late")),
        ]
    )["messages"]
    tools = [m for m in messages if m["role"] == "tool"]
    assert [m.get("tool_name") for m in tools] == [
        None,
        "first",
        "second",
        "other",
        "explicit",
        None,
    ]
    assert [m["tool_call_id"] for m in tools] == ["c1", "c1", "c1", "c2", "c1", "c9"]


@given(
    max_tokens=st.none() | positive_ints,
    max_completion_tokens=st.none() | positive_ints,
    client_num_predict=st.none() | st.integers(min_value=-2, max_value=10**6),
    send_nulls=st.booleans(),
)
def test_max_tokens_precedence(
    max_tokens: int | None,
    max_completion_tokens: int | None,
    client_num_predict: int | None,
    send_nulls: bool,
) -> None:
    caps = {"max_tokens": max_tokens, "max_completion_tokens": max_completion_tokens}
    # Absent and explicit null must mean the same thing.
    body: dict[str, Any] = {
        **BASE,
        **{k: v for k, v in caps.items() if v is not None or send_nulls},
    }
    if client_num_predict is not None:
        body["options"] = {"num_predict": client_num_predict}

    native = chat_request(body)

    expected = next(
        (v for v in (max_completion_tokens, max_tokens, client_num_predict) if v is not None),
        None,
    )
    assert native.get("options", {}).get("num_predict") == expected
    assert requested_completion_cap(native) == (expected if expected and expected > 0 else None)


_sampling = {
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=0, max_value=1),
    "frequency_penalty": st.floats(min_value=-2, max_value=2),
    "presence_penalty": st.integers(min_value=-2, max_value=2),
    "seed": st.integers(min_value=-(2**63), max_value=2**63 - 1),
}


@given(given_fields=st.fixed_dictionaries({}, optional=_sampling))
def test_sampling_options_present_iff_given(given_fields: dict[str, Any]) -> None:
    native = chat(**given_fields)
    assert native.get("options", {}) == given_fields
    # Never defaulted, unlike Ollama's own layer (which forces 1.0).
    assert ("temperature" in native.get("options", {})) == ("temperature" in given_fields)
    assert ("top_p" in native.get("options", {})) == ("top_p" in given_fields)


@given(stop=st.none() | st.text() | st.lists(st.text(), max_size=4))
def test_stop_normalisation(stop: str | list[str] | None) -> None:
    options = chat(stop=stop).get("options", {})
    if isinstance(stop, str):
        assert options["stop"] == [stop]
    elif stop:
        assert options["stop"] == stop
    else:
        assert "stop" not in options


@given(
    client=st.dictionaries(
        st.sampled_from(["num_ctx", "temperature", "num_predict", "top_k", "seed"]),
        st.integers(min_value=1, max_value=100),
    ),
    temperature=st.none() | st.floats(min_value=0, max_value=2),
)
def test_client_options_are_kept_and_mapped_fields_win(
    client: dict[str, int], temperature: float | None
) -> None:
    body = {**BASE, "options": client, "max_tokens": 9}
    if temperature is not None:
        body["temperature"] = temperature
    options = chat_request(body)["options"]
    mapped = {"num_predict": 9} | ({} if temperature is None else {"temperature": temperature})
    assert options == {**client, **mapped}
    assert body["options"] == client  # the caller's body is not mutated


_INVALID_CHAT: list[tuple[str, Any, str]] = [
    ("model", None, "model"),
    ("model", "", "model"),
    ("model", 3, "model"),
    ("messages", [], "messages"),
    ("messages", "hi", "messages"),
    ("messages", ["hi"], "messages[0]"),
    ("messages", [{"role": "bot", "content": "x"}], "messages[0].role"),
    ("messages", [{"role": "function", "content": "x"}], "messages[0].role"),
    ("messages", [{"content": "x"}], "messages[0].role"),
    ("messages", [{"role": "user", "content": 5}], "messages[0].content"),
    (
        "messages",
        [{"role": "user", "content": [{"type": "input_audio"}]}],
        "messages[0].content[0].type",
    ),
    (
        "messages",
        [{"role": "user", "content": [{"type": "text", "text": 1}]}],
        "messages[0].content[0].text",
    ),
    (
        "messages",
        [USER, {"role": "tool", "content": "x", "tool_call_id": 3}],
        "messages[1].tool_call_id",
    ),
    ("messages", [USER, {"role": "assistant", "tool_calls": {}}], "messages[1].tool_calls"),
    (
        "messages",
        [USER, {"role": "assistant", "tool_calls": [{"function": {}}]}],
        "messages[1].tool_calls[0].function.name",
    ),
    ("max_tokens", "x", "max_tokens"),
    ("max_tokens", -1, "max_tokens"),
    ("max_tokens", 0, "max_tokens"),
    ("max_tokens", 1.5, "max_tokens"),
    ("max_tokens", True, "max_tokens"),
    ("max_tokens", 2**64, "max_tokens"),
    ("max_completion_tokens", "10", "max_completion_tokens"),
    ("temperature", "hot", "temperature"),
    ("temperature", 2.5, "temperature"),
    ("temperature", -0.1, "temperature"),
    ("top_p", 1.5, "top_p"),
    ("frequency_penalty", -3, "frequency_penalty"),
    ("presence_penalty", [], "presence_penalty"),
    ("seed", "1", "seed"),
    ("seed", 1.5, "seed"),
    ("stop", 5, "stop"),
    ("stop", ["a", 1], "stop[1]"),
    ("stream", "yes", "stream"),
    ("stream", 1, "stream"),
    ("stream_options", [], "stream_options"),
    ("stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
    ("response_format", "json", "response_format"),
    ("response_format", {"type": "xml"}, "response_format.type"),
    ("response_format", {"type": "json_schema"}, "response_format.json_schema"),
    (
        "response_format",
        {"type": "json_schema", "json_schema": {"schema": 1}},
        "response_format.json_schema.schema",
    ),
    ("reasoning_effort", "extreme", "reasoning_effort"),
    ("reasoning_effort", 1, "reasoning_effort"),
    ("reasoning", "high", "reasoning"),
    ("reasoning", {"effort": 3}, "reasoning.effort"),
    ("tools", {"type": "function"}, "tools"),
    ("tools", ["x"], "tools[0]"),
    ("options", [], "options"),
    ("keep_alive", True, "keep_alive"),
    ("think", 1, "think"),
    ("format", 3, "format"),
]


@pytest.mark.parametrize(("field", "value", "param"), _INVALID_CHAT)
def test_invalid_chat_fields_name_their_param(field: str, value: Any, param: str) -> None:
    error = invalid(chat_request, {**FULL, field: value})
    assert error.param == param
    assert error.status == 400
    assert error.message


def test_missing_body_fields_and_non_object_body() -> None:
    assert invalid(chat_request, {"messages": [USER]}).param == "model"
    assert invalid(chat_request, {"model": "m"}).param == "messages"
    assert invalid(chat_request, ["not", "an", "object"]).param is None


@given(field=chat_fields, value=json_values | fuzzed_messages())
def test_fuzzed_field_returns_a_body_or_names_that_field(field: str, value: Any) -> None:
    try:
        native = chat_request({**FULL, field: value})
    except InvalidRequest as error:
        raised: InvalidRequest | None = error
    else:
        raised = None
        assert isinstance(native["stream"], bool)
        assert msgspec.json.decode(msgspec.json.encode(native)) == native
    if raised is not None:
        assert raised.param is not None
        assert param_root(raised.param) == field


@given(body=st.dictionaries(chat_fields, json_values | fuzzed_messages(), max_size=8))
def test_fuzzed_body_only_ever_raises_invalid_request(body: dict[str, Any]) -> None:
    for translate in (chat_request, completion_request, embeddings_request):
        # Anything but a result or InvalidRequest propagates and fails the test.
        try:
            translate(body)
        except InvalidRequest as error:
            raised: InvalidRequest | None = error
        else:
            raised = None
        assert raised is None or (raised.status == 400 and raised.message)


@pytest.mark.parametrize(
    ("effort", "think"),
    [
        ("none", False),
        ("minimal", "low"),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        ("max", "max"),
        ("xhigh", "max"),
    ],
)
def test_reasoning_effort_mapping(effort: str, think: bool | str) -> None:
    assert chat(reasoning_effort=effort)["think"] == think
    assert chat(reasoning={"effort": effort})["think"] == think
    # Overrides a native ``think`` the client also sent.
    assert chat(reasoning_effort=effort, think=True)["think"] == think


def test_response_format_mapping() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert "format" not in chat(response_format={"type": "text"})
    assert chat(response_format={"type": "json_object"})["format"] == "json"
    wrapped = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert chat(response_format=wrapped)["format"] == schema
    schemaless = {"type": "json_schema", "json_schema": {"name": "x"}}
    assert chat(response_format=schemaless)["format"] == "json"
    # response_format wins over a native ``format`` sent alongside.
    assert chat(response_format={"type": "json_object"}, format=schema)["format"] == "json"
    assert chat(format=schema)["format"] == schema


def test_dropped_and_passed_through_fields() -> None:
    native = chat(n=2, user="u", logit_bias={"1": 2}, logprobs=False, parallel_tool_calls=False)
    assert set(native) == {"model", "messages", "stream"}  # n is the fan-out's, not Ollama's
    extras = chat(keep_alive=0, think="high", format="json", options={"num_ctx": 8192})
    assert extras["keep_alive"] == 0
    assert extras["think"] == "high"
    assert extras["format"] == "json"
    assert extras["options"] == {"num_ctx": 8192}
    tools = FULL["tools"]
    assert chat(tools=tools, tool_choice="auto")["tools"] == tools
    assert "tools" not in chat(tools=tools, tool_choice="none")
    assert "tools" not in chat(tools=[])


def test_content_parts_become_native_messages() -> None:
    content = [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "text", "text": "b"},
        {"type": "image_url", "image_url": f"data:;base64,{PNG_B64}"},
    ]
    assert chat(messages=[{"role": "user", "content": content}])["messages"] == [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "", "images": [PNG_B64]},
        {"role": "user", "content": "b"},
        {"role": "user", "content": "", "images": [PNG_B64]},
    ]
    developer = chat(messages=[{"role": "developer", "content": "be brief"}, USER])
    assert developer["messages"][0] == {"role": "system", "content": "be brief"}
    empty = chat(messages=[{"role": "user", "content": []}])
    assert empty["messages"] == [{"role": "user", "content": ""}]


def test_assistant_tool_calls_and_reasoning_sit_on_the_last_native_message() -> None:
    assistant = {
        "role": "assistant",
        "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}],
        "reasoning": "because",
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": '{"a":1}'}}],
    }
    tool = {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]}
    messages = chat(messages=[USER, assistant, tool])["messages"]
    assert messages[1] == {"role": "assistant", "content": "x"}
    assert messages[2] == {
        "role": "assistant",
        "content": "y",
        "thinking": "because",
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}],
    }
    assert messages[3] == {"role": "tool", "content": "42", "tool_name": "f", "tool_call_id": "c1"}


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://example.com/cat.png", "not supported"),
        ("http://example.com/cat.png", "base64"),
        (f"data:image/gif;base64,{PNG_B64}", "png, jpeg or webp"),
        ("data:image/png;base64,@@not base64@@", "base64"),
        ("data:image/png;base64,", "base64"),
    ],
)
def test_unusable_images_are_a_clear_400(url: str, fragment: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    error = invalid(chat_request, {**BASE, "messages": [{"role": "user", "content": content}]})
    assert fragment in error.message
    assert error.param == "messages[0].content[0].image_url"


# --------------------------------------------------------------------------- other requests


def test_completion_request_mapping() -> None:
    body = {"model": "m", "prompt": "Once", "max_tokens": 5, "suffix": "end", "stop": "\n"}
    assert completion_request(body) == {
        "model": "m",
        "prompt": "Once",
        "stream": False,
        "suffix": "end",
        "options": {"num_predict": 5, "stop": ["\n"]},
    }
    assert completion_request({"model": "m", "prompt": ["only one"]})["prompt"] == "only one"
    assert completion_request({"model": "m", "prompt": "", "echo": False})["prompt"] == ""
    passed = completion_request({"model": "m", "prompt": "x", "images": [PNG_B64], "think": False})
    assert passed["images"] == [PNG_B64]
    assert passed["think"] is False


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"prompt": [1, 2, 3]}, "prompt", "Token-id arrays"),
        ({"prompt": [[1, 2], [3]]}, "prompt", "Token-id arrays"),
        ({"prompt": []}, "prompt", "non-empty"),
        ({"prompt": None}, "prompt", "string"),
        ({"prompt": "x", "echo": True}, "echo", "not supported"),
        ({"prompt": "x", "echo": "no"}, "echo", "boolean"),
        ({"prompt": "x", "suffix": 1}, "suffix", "string"),
        ({"prompt": "x", "max_tokens": "x"}, "max_tokens", "an integer"),
        ({"prompt": "x", "images": "abc"}, "images", "type"),
    ],
)
def test_invalid_completion_requests(body: dict[str, Any], param: str, fragment: str) -> None:
    error = invalid(completion_request, {"model": "m", **body})
    assert error.param == param
    assert fragment in error.message


@given(texts=st.lists(st.text(), min_size=1, max_size=2048))
def test_embedding_inputs_become_string_lists(texts: list[str]) -> None:
    native, encoding = embeddings_request({"model": "e", "input": texts})
    assert native == {"model": "e", "input": texts}
    assert encoding == "float"


def test_embeddings_request_mapping() -> None:
    assert embeddings_request({"model": "e", "input": ""})[0]["input"] == [""]
    native, encoding = embeddings_request(
        {"model": "e", "input": "x", "encoding_format": "BASE64", "dimensions": 256, "user": "u"}
    )
    assert native == {"model": "e", "input": ["x"], "dimensions": 256}
    assert encoding == "base64"
    assert (
        embeddings_request({"model": "e", "input": "x", "truncate": False})[0]["truncate"] is False
    )


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"input": []}, "input", "empty"),
        ({"input": [1, 2, 3]}, "input", "check_embedding_ctx_length=False"),
        ({"input": [[1, 2], [3]]}, "input", "check_embedding_ctx_length=False"),
        ({"input": ["a", 1]}, "input", "array of strings"),
        ({"input": None}, "input", "string"),
        ({"input": ["a"] * 2049}, "input", "2048"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "base64"),
        ({"input": "x", "dimensions": 0}, "dimensions", "an integer >= 1"),
        ({"input": "x", "truncate": "yes"}, "truncate", "type"),
    ],
)
def test_invalid_embeddings_requests(body: dict[str, Any], param: str, fragment: str) -> None:
    error = invalid(embeddings_request, {"model": "e", **body})
    assert error.param == param
    assert fragment in error.message


# --------------------------------------------------------------------------- admission helpers


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({"model": "m", "messages": [], "options": {"num_predict": 100}}, 100),
        ({"model": "m", "prompt": "x", "options": {"num_predict": -1}}, None),
        ({"model": "m", "prompt": "x", "options": {"num_predict": 0}}, None),
        ({"model": "m", "prompt": "x", "options": {"num_predict": 12.0}}, 12),
        ({"model": "m", "prompt": "x", "options": {"num_predict": 12.5}}, None),
        ({"model": "m", "prompt": "x", "options": {"num_predict": True}}, None),
        ({"model": "m", "prompt": "x", "options": {"num_predict": "9"}}, None),
        ({"model": "m", "prompt": "x", "options": "junk"}, None),
        ({"model": "m", "input": ["x"]}, None),
        ({"model": "m", "prompt": "x"}, None),
    ],
)
def test_requested_completion_cap(body: dict[str, Any], cap: int | None) -> None:
    assert requested_completion_cap(body) == cap


@given(
    body=st.sampled_from(
        [
            {"model": "m", "messages": [USER]},
            {"model": "m", "prompt": "x", "options": {"num_predict": -1, "top_k": 3}},
            {"model": "m", "input": ["x"], "options": {}},
            {"model": "m", "prompt": "x"},
        ]
    ),
    cap=positive_ints,
)
def test_apply_completion_cap(body: dict[str, Any], cap: int) -> None:
    body = json.loads(json.dumps(body))  # a fresh copy per example
    other_options = {k: v for k, v in body.get("options", {}).items() if k != "num_predict"}
    apply_completion_cap(body, cap)
    assert requested_completion_cap(body) == cap
    assert {k: v for k, v in body["options"].items() if k != "num_predict"} == other_options


def test_apply_completion_cap_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        apply_completion_cap({"model": "m"}, 0)
    assert invalid(apply_completion_cap, {"model": "m", "options": [1]}, 5).param == "options"


def test_prompt_text_bytes_counts_every_prompt_field() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    calls = [{"function": {"name": "f", "arguments": {"a": 1}}}]
    chat_body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "héllo"},  # 6 + 6 bytes
            {"role": "user", "content": "", "images": [PNG_B64, PNG_B64]},  # 4
            {"role": "assistant", "content": "ok", "thinking": "hm", "tool_calls": calls},
            {"role": "tool", "content": "r", "tool_name": "f", "tool_call_id": "c1"},
            "junk",
        ],
        "tools": tools,
    }
    roles = len("system") + len("user") + len("assistant") + len("tool")
    expected = (
        roles + 6 + 2 + 2 + 1 + 1 + 2
        + len(msgspec.json.encode(calls))
        + len(msgspec.json.encode(tools))
    )  # fmt: skip
    assert prompt_text_bytes(chat_body) == (expected, 4, 2, 0)
    generate = {
        "model": "m",
        "system": "s",
        "template": "{{ .Prompt }}",
        "prompt": "日本",
        "suffix": "x",
        "images": ["a"],
        "context": [1, 2, 3],
    }
    assert prompt_text_bytes(generate) == (1 + 13 + 6 + 1, 0, 1, 3)
    assert prompt_text_bytes({"model": "m", "input": ["ab", "ü", 3]}) == (4, 3, 0, 0)
    assert prompt_text_bytes({"model": "m", "input": "abc"}) == (3, 0, 0, 0)
    assert prompt_text_bytes({"model": "m", "prompt": "legacy embeddings"}) == (17, 0, 0, 0)


@given(conversation=conversations())
def test_prompt_text_bytes_of_translated_chat(conversation: list[dict[str, Any]]) -> None:
    native = chat(messages=conversation)
    text = sum(
        len(m[k].encode())
        for m in native["messages"]
        for k in ("role", "content", "thinking", "tool_name", "tool_call_id")
        if k in m
    )
    calls = sum(
        len(msgspec.json.encode(m["tool_calls"])) for m in native["messages"] if "tool_calls" in m
    )
    images = sum(len(m.get("images", ())) for m in native["messages"])
    assert prompt_text_bytes(native) == (text + calls, len(native["messages"]), images, 0)


# --------------------------------------------------------------------------- chat responses


@pytest.mark.parametrize(
    ("done_reason", "with_calls", "finish"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        (None, False, "stop"),
        ("load", False, "stop"),
        ("stop", True, "tool_calls"),
        (None, True, "tool_calls"),
        ("length", True, "length"),
    ],
)
def test_finish_reason_mapping(done_reason: str | None, with_calls: bool, finish: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if with_calls:
        message["tool_calls"] = [{"function": {"name": "f", "arguments": {}}}]
    native: dict[str, Any] = {"message": message, "done": True}
    if done_reason is not None:
        native["done_reason"] = done_reason
    body = chat_response(native, model="m", completion_id=ID, created=CREATED)
    assert body["choices"][0]["finish_reason"] == finish

    stream = ChatStream(model="m", completion_id=ID, created=CREATED, include_usage=False)
    chunks = sse_chunks(stream.feed(native))
    assert chunks[-1]["choices"][0]["finish_reason"] == finish


def test_chat_response_shape_validates_with_the_sdk() -> None:
    native = {
        "model": "llama3.2:latest",
        "created_at": "2025-10-26T17:15:24Z",
        "message": {"role": "assistant", "content": "Hello!", "thinking": "greet"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 26,
        "eval_count": 3,
    }
    body = chat_response(native, model="llama3.2", completion_id=ID, created=CREATED)
    parsed = ChatCompletion.model_validate(body)
    assert parsed.id == ID
    assert parsed.created == CREATED
    assert parsed.model == "llama3.2"  # the name the client asked for
    assert parsed.choices[0].message.content == "Hello!"
    assert body["choices"][0]["message"]["reasoning"] == "greet"
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (26, 3)
    assert parsed.usage.total_tokens == 29


def test_chat_response_with_only_tool_calls_has_null_content() -> None:
    calls = [
        {"id": "call_ab", "function": {"index": 0, "name": "f", "arguments": {"x": [1]}}},
        {"function": {"index": 1, "name": "g", "arguments": {}}},
    ]
    native = {"message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": True}
    body = chat_response(native, model="m", completion_id=ID, created=CREATED)
    parsed = ChatCompletion.model_validate(body)
    message = parsed.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    assert [c.id for c in message.tool_calls] == ["call_ab", "call_abc123_1"]
    assert [c.type for c in message.tool_calls] == ["function", "function"]
    functions = [c.function for c in message.tool_calls if c.type == "function"]
    assert [json.loads(f.arguments) for f in functions] == [{"x": [1]}, {}]
    # No counts upstream: usage is still there, with zeros.
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    with_text = {"message": {"content": "calling", "tool_calls": calls[:1]}, "done": True}
    assert chat_response(with_text, model="m", completion_id=ID, created=CREATED)["choices"][0][
        "message"
    ]["content"] == ("calling")


def test_chat_response_end_to_end_through_the_sdk(sdk: tuple[openai.OpenAI, Upstream]) -> None:
    client, upstream = sdk
    native = {"message": {"role": "assistant", "content": "Hi"}, "done": True, "eval_count": 2}
    body = chat_response(native, model="llama3.2", completion_id=ID, created=CREATED)
    upstream.answer(msgspec.json.encode(body), "application/json")
    result = client.chat.completions.create(model="llama3.2", messages=[USER])
    assert result.choices[0].message.content == "Hi"
    assert result.usage is not None
    assert result.usage.completion_tokens == 2
    # The request the SDK sent translates cleanly.
    assert chat_request(upstream.requests[-1])["messages"] == [{"role": "user", "content": "hi"}]


# --------------------------------------------------------------------------- chat streams


def _frame_calls(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for f in frames for c in f["message"].get("tool_calls", [])]


def _has_payload(frame: dict[str, Any]) -> bool:
    message = frame.get("message", {})
    return bool(message.get("content") or message.get("thinking") or message.get("tool_calls"))


@given(frames=native_chat_streams(), usage=st.booleans())
def test_chat_stream_properties(frames: list[dict[str, Any]], usage: bool) -> None:
    stream = ChatStream(model="llama3.2", completion_id=ID, created=CREATED, include_usage=usage)
    body = b"".join(stream.feed(frame) for frame in frames)

    # The raw-line entry point produces exactly the same bytes.
    by_line = ChatStream(model="llama3.2", completion_id=ID, created=CREATED, include_usage=usage)
    assert b"".join(by_line.feed_line(msgspec.json.encode(f)) for f in frames) == body

    assert body.endswith(SSE_DONE)
    assert body.count(SSE_DONE) == 1
    chunks = sse_chunks(body)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assert (chunk["id"], chunk["created"], chunk["model"]) == (ID, CREATED, "llama3.2")
        assert chunk["object"] == "chat.completion.chunk"

    with_choices = [c for c in chunks if c["choices"]]
    deltas = [c["choices"][0]["delta"] for c in with_choices]
    assert deltas[0]["role"] == "assistant"
    assert all("role" not in d for d in deltas[1:])
    assert "".join(d.get("content", "") for d in deltas) == "".join(
        f["message"]["content"] for f in frames
    )
    assert "".join(d.get("reasoning", "") for d in deltas) == "".join(
        f["message"].get("thinking", "") for f in frames
    )

    native_calls = _frame_calls(frames)
    streamed = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [c["index"] for c in streamed] == list(range(len(native_calls)))
    for call, native in zip(streamed, native_calls, strict=True):
        assert call["type"] == "function"
        assert call["function"]["name"] == native["function"]["name"]
        assert json.loads(call["function"]["arguments"]) == native["function"]["arguments"]
        assert call["id"] == native.get("id", f"call_abc123_{call['index']}")

    finishing = [c for c in with_choices if c["choices"][0]["finish_reason"] is not None]
    assert finishing == [with_choices[-1]]
    assert finishing[0]["choices"][0]["delta"] == {}
    final = frames[-1]
    expected_finish = (
        "length"
        if final.get("done_reason") == "length"
        else "tool_calls"
        if native_calls
        else "stop"
    )
    assert finishing[0]["choices"][0]["finish_reason"] == expected_finish

    prompt, completion = final.get("prompt_eval_count", 0), final.get("eval_count", 0)
    usage_chunks = [c for c in chunks if not c["choices"]]
    if usage:
        assert usage_chunks == [chunks[-1]]
        assert chunks[-1]["usage"] == {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert usage_chunks == []
        assert all("usage" not in c for c in chunks)

    assert stream.done
    assert (stream.prompt_tokens, stream.completion_tokens) == (prompt, completion)
    assert stream.content_frames == sum(_has_payload(f) for f in frames)
    assert stream.feed(frames[-1]) == b""
    assert stream.error("late") == b""


@settings(max_examples=25)
@given(frames=native_chat_streams(), usage=st.booleans())
def test_chat_stream_end_to_end_through_the_sdk(
    sdk: tuple[openai.OpenAI, Upstream], frames: list[dict[str, Any]], usage: bool
) -> None:
    client, upstream = sdk
    stream = ChatStream(model="llama3.2", completion_id=ID, created=CREATED, include_usage=usage)
    upstream.answer(b"".join(stream.feed(f) for f in frames), "text/event-stream")

    options: Any = {"include_usage": True} if usage else openai.omit
    with client.chat.completions.stream(
        model="llama3.2", messages=[USER], stream_options=options
    ) as events:
        for _ in events:
            pass
        snapshot = events.current_completion_snapshot
        if frames[-1].get("done_reason") == "length":
            # The SDK's helper refuses to "parse" a truncated answer: proof it read the
            # finish_reason we sent.
            with pytest.raises(openai.LengthFinishReasonError):
                events.get_final_completion()
        else:
            assert events.get_final_completion().choices[0].finish_reason in ("stop", "tool_calls")

    assert snapshot.id == ID
    message = snapshot.choices[0].message
    assert (message.content or "") == "".join(f["message"]["content"] for f in frames)
    native_calls = _frame_calls(frames)
    assert [json.loads(c.function.arguments) for c in message.tool_calls or []] == [
        c["function"]["arguments"] for c in native_calls
    ]
    if usage:
        assert snapshot.usage is not None
        assert snapshot.usage.completion_tokens == frames[-1].get("eval_count", 0)
    else:
        assert snapshot.usage is None


def test_chat_stream_role_chunk_for_an_empty_answer() -> None:
    stream = ChatStream(model="m", completion_id=ID, created=CREATED, include_usage=False)
    assert stream.feed({"message": {"role": "assistant", "content": ""}, "done": False}) == b""
    chunks = sse_chunks(stream.feed({"message": {"content": ""}, "done": True}))
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {},
    ]
    assert stream.content_frames == 0


def test_chat_stream_cut_short_keeps_counts_and_ends_with_one_error_event(
    sdk: tuple[openai.OpenAI, Upstream],
) -> None:
    client, upstream = sdk
    stream = ChatStream(model="m", completion_id=ID, created=CREATED, include_usage=True)
    body = stream.feed({"message": {"content": "par"}, "done": False})
    body += stream.feed({"message": {"content": "tial"}, "done": False})
    body += stream.error("The model backend failed.")
    assert stream.error("again") == b""
    assert stream.feed({"message": {"content": "more"}, "done": False}) == b""
    assert not stream.done
    assert stream.content_frames == 2
    assert stream.error_message == "The model backend failed."

    payloads = sse_payloads(body)
    assert "[DONE]" not in payloads
    assert json.loads(payloads[-1]) == {
        "error": {
            "message": "The model backend failed.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }

    upstream.answer(body, "text/event-stream")
    chunks = iter(client.chat.completions.create(model="m", messages=[USER], stream=True))
    assert [next(chunks).choices[0].delta.content for _ in range(2)] == ["par", "tial"]
    with pytest.raises(openai.APIError, match=r"^The model backend failed\.$"):
        next(chunks)


def test_chat_stream_turns_native_errors_and_garbage_into_the_error_event() -> None:
    stream = ChatStream(model="m", completion_id=ID, created=CREATED, include_usage=False)
    event = stream.feed({"error": "model runner crashed"})
    assert json.loads(sse_payloads(event)[0])["error"]["message"] == "model runner crashed"

    for line in (b"not json", b'{"done": "yes"}', b'{"error": "x"}'):
        by_line = ChatStream(model="m", completion_id=ID, created=CREATED, include_usage=False)
        error = json.loads(sse_payloads(by_line.feed_line(line))[0])["error"]
        assert error["type"] == "server_error"
        assert by_line.error_message == error["message"]
        assert by_line.finished


# --------------------------------------------------------------------------- completions


@given(frames=native_generate_streams(), usage=st.booleans())
def test_completion_stream_properties(frames: list[dict[str, Any]], usage: bool) -> None:
    stream = CompletionStream(
        model="m", completion_id="cmpl-x1", created=CREATED, include_usage=usage
    )
    body = b"".join(stream.feed(f) for f in frames)
    by_line = CompletionStream(
        model="m", completion_id="cmpl-x1", created=CREATED, include_usage=usage
    )
    assert b"".join(by_line.feed_line(msgspec.json.encode(f)) for f in frames) == body

    chunks = sse_chunks(body)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert all((c["id"], c["created"]) == ("cmpl-x1", CREATED) for c in chunks)
    with_choices = [c for c in chunks if c["choices"]]
    assert "".join(c["choices"][0]["text"] for c in with_choices) == "".join(
        f["response"] for f in frames
    )
    finishing = [c for c in with_choices if c["choices"][0]["finish_reason"] is not None]
    assert finishing == [with_choices[-1]]
    last = Completion.model_validate(with_choices[-1])
    expected = "length" if frames[-1].get("done_reason") == "length" else "stop"
    assert last.choices[0].finish_reason == expected
    assert last.choices[0].text == frames[-1]["response"]
    prompt, completion = frames[-1].get("prompt_eval_count", 0), frames[-1].get("eval_count", 0)
    if usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["total_tokens"] == prompt + completion
        assert sum(not c["choices"] for c in chunks) == 1
    else:
        assert all(c["choices"] for c in chunks)
    assert stream.content_frames == sum(bool(f["response"] or f.get("thinking")) for f in frames)
    assert (stream.prompt_tokens, stream.completion_tokens) == (prompt, completion)


@settings(max_examples=20)
@given(frames=native_generate_streams())
def test_completion_stream_end_to_end_through_the_sdk(
    sdk: tuple[openai.OpenAI, Upstream], frames: list[dict[str, Any]]
) -> None:
    client, upstream = sdk
    stream = CompletionStream(
        model="m", completion_id="cmpl-1", created=CREATED, include_usage=True
    )
    upstream.answer(b"".join(stream.feed(f) for f in frames), "text/event-stream")
    chunks = list(
        client.completions.create(
            model="m", prompt="x", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "".join(
        f["response"] for f in frames
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == frames[-1].get("eval_count", 0)


def test_completion_response_validates_with_the_sdk() -> None:
    native = {"response": "Once upon", "done": True, "done_reason": "length", "eval_count": 2}
    body = completion_response(native, model="m", completion_id="cmpl-9", created=CREATED)
    parsed = Completion.model_validate(body)
    assert parsed.object == "text_completion"
    assert parsed.choices[0].text == "Once upon"
    assert parsed.choices[0].finish_reason == "length"
    assert parsed.usage is not None
    assert parsed.usage.total_tokens == 2


# --------------------------------------------------------------------------- native tap


@given(frames=native_chat_streams() | native_generate_streams())
def test_native_tap_counts_like_the_translators(frames: list[dict[str, Any]]) -> None:
    tap = NativeStreamTap()
    for frame in frames:
        tap.feed(msgspec.json.encode(frame))
    final = frames[-1]
    assert tap.done
    assert tap.prompt_tokens == final.get("prompt_eval_count", 0)
    assert tap.completion_tokens == final.get("eval_count", 0)
    expected = sum(
        _has_payload(f) if "message" in f else bool(f["response"] or f.get("thinking"))
        for f in frames
    )
    assert tap.content_frames == expected
    assert tap.error_message is None
    assert tap.invalid_lines == 0


def test_native_tap_on_errors_garbage_and_cut_streams() -> None:
    tap = NativeStreamTap()
    tap.feed(b'{"message":{"role":"assistant","content":"a"},"done":false}')
    tap.feed(b"{broken")
    tap.feed(native_error_line("runner died").rstrip(b"\n"))
    assert not tap.done
    assert tap.content_frames == 1
    assert tap.invalid_lines == 1
    assert tap.error_message == "runner died"


@given(message=unicode_text)
def test_native_error_line(message: str) -> None:
    line = native_error_line(message)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == {"error": message}


# --------------------------------------------------------------------------- embeddings


@given(vectors=embedding_batches, tokens=st.integers(min_value=0, max_value=10**6))
def test_embeddings_response_float_and_base64(vectors: list[list[float]], tokens: int) -> None:
    native = {"model": "e", "embeddings": vectors, "prompt_eval_count": tokens}
    floats = embeddings_response(native, model="all-minilm", encoding_format="float")
    parsed = CreateEmbeddingResponse.model_validate(floats)
    assert [d.embedding for d in parsed.data] == vectors
    assert [d.index for d in parsed.data] == list(range(len(vectors)))
    assert parsed.usage.prompt_tokens == parsed.usage.total_tokens == tokens
    assert parsed.model == "all-minilm"

    packed = embeddings_response(native, model="all-minilm", encoding_format="BASE64")
    for item, vector in zip(packed["data"], vectors, strict=True):
        raw = base64.b64decode(item["embedding"], validate=True)
        # Little-endian float32, decoded explicitly (the SDK's array('f') is native order).
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == vector


@settings(max_examples=20)
@given(vectors=embedding_batches)
def test_embeddings_end_to_end_through_the_sdk_default_base64(
    sdk: tuple[openai.OpenAI, Upstream], vectors: list[list[float]]
) -> None:
    client, upstream = sdk
    inputs = [f"text {i}" for i in range(len(vectors))]
    # Answer whatever format the SDK asks for, exactly as the gateway will.
    request = {"model": "e", "input": inputs, "encoding_format": "base64"}
    _, encoding = embeddings_request(request)
    body = embeddings_response({"embeddings": vectors}, model="e", encoding_format=encoding)
    upstream.answer(msgspec.json.encode(body), "application/json")
    result = client.embeddings.create(model="e", input=inputs)
    assert upstream.requests[-1]["encoding_format"] == "base64"  # the SDK's default
    assert [d.embedding for d in result.data] == vectors


def test_embeddings_response_never_has_empty_data() -> None:
    for native in ({"model": "e", "embeddings": []}, {"model": "e"}, {"embeddings": None}):
        error = invalid(
            lambda n: embeddings_response(n, model="e", encoding_format="float"), native
        )
        assert error.param == "input"


# --------------------------------------------------------------------------- ids and models


def test_completion_ids_are_unique_and_well_formed() -> None:
    ids = {new_completion_id("chatcmpl") for _ in range(20_000)}
    assert len(ids) == 20_000
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{24}", i) for i in ids)
    assert re.fullmatch(r"cmpl-[0-9a-f]{24}", new_completion_id("cmpl"))


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("llama3.2:latest", "library"),
        ("library/llama3:8b", "library"),
        ("acme/model:tag", "acme"),
        ("registry.example:5000/team/model:1", "team"),
        ("/odd", "library"),
    ],
)
def test_model_owner(name: str, owner: str) -> None:
    assert model_object(name, 1)["owned_by"] == owner


@given(names=st.lists(model_names(), max_size=5), created=st.integers(min_value=0, max_value=2**40))
def test_models_list_validates_with_the_sdk(names: list[str], created: int) -> None:
    listing = models_list(model_object(name, created) for name in names)
    assert listing["object"] == "list"
    assert isinstance(listing["data"], list)
    models = [Model.model_validate(m) for m in listing["data"]]
    assert [m.id for m in models] == names
    assert all(m.created == created and m.object == "model" for m in models)


def test_empty_models_list_through_the_sdk(sdk: tuple[openai.OpenAI, Upstream]) -> None:
    client, upstream = sdk
    assert models_list([]) == {"object": "list", "data": []}
    upstream.answer(msgspec.json.encode(models_list([])), "application/json")
    assert list(client.models.list()) == []
