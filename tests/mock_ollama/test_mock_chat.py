"""`/api/chat`: framing, counts, options, tools, thinking and structured output."""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama
import pytest

from .frames import UTC_TIME, ndjson_frames

USER = [{"role": "user", "content": "Why is the sky blue?"}]


def _chat(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/api/chat", json={"model": "llama3.2", "messages": USER, **body})


def test_stream_defaults_to_true_and_frames_are_clean_ndjson(http: httpx.Client) -> None:
    response = _chat(http)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    frames = ndjson_frames(response.content)
    assert len(frames) == 25  # 24 tokens + the final frame
    for frame in frames:
        assert frame["model"] == "llama3.2"
        assert frame["message"]["role"] == "assistant"
        assert isinstance(frame["message"]["content"], str)
        assert UTC_TIME.match(frame["created_at"]), frame["created_at"]
    *tokens, final = frames
    assert not any(f["done"] for f in tokens)
    assert all(f["message"]["content"] for f in tokens)
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] == 24
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int)
        assert final[key] > 0
    assert "context" not in final


def test_prompt_eval_count_follows_the_documented_rule(http: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "s" * 40},  # 4 + 10
        {"role": "user", "content": "u" * 41},  # 4 + 11
    ]
    final = http.post(
        "/api/chat", json={"model": "llama3.2", "messages": messages, "stream": False}
    ).json()
    assert final["prompt_eval_count"] == 1 + 14 + 15


def test_non_streamed_matches_the_stream(http: httpx.Client) -> None:
    whole = _chat(http, stream=False)
    assert whole.headers["content-type"] == "application/json; charset=utf-8"
    body = whole.json()
    frames = ndjson_frames(_chat(http).content)
    assert body["message"]["content"] == "".join(f["message"]["content"] for f in frames)
    assert body["done"] is True
    assert body["eval_count"] == frames[-1]["eval_count"] == 24
    assert body["prompt_eval_count"] == frames[-1]["prompt_eval_count"]


def test_text_is_deterministic_per_prompt(http: httpx.Client) -> None:
    first = _chat(http, stream=False).json()["message"]["content"]
    again = _chat(http, stream=False).json()["message"]["content"]
    other = http.post(
        "/api/chat",
        json={"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "x"}]},
    ).json()["message"]["content"]
    assert first == again
    assert first != other
    assert first[0].isupper()


def test_model_is_echoed_exactly_as_sent(http: httpx.Client) -> None:
    frames = ndjson_frames(
        http.post("/api/chat", json={"model": "Llama3.2:LATEST", "messages": USER}).content
    )
    assert {f["model"] for f in frames} == {"Llama3.2:LATEST"}


def test_num_predict_cuts_with_done_reason_length(http: httpx.Client) -> None:
    frames = ndjson_frames(_chat(http, options={"num_predict": 5}).content)
    *tokens, final = frames
    assert final["done_reason"] == "length"
    assert final["eval_count"] == len(tokens) == 5


def test_num_predict_above_the_answer_length_stops_normally(http: httpx.Client) -> None:
    final = _chat(http, stream=False, options={"num_predict": 500}).json()
    assert final["done_reason"] == "stop"
    assert final["eval_count"] == 24


def test_stop_sequence_ends_the_answer_early(http: httpx.Client) -> None:
    text = _chat(http, stream=False).json()["message"]["content"]
    stop = text.split()[3]
    final = _chat(http, stream=False, options={"stop": [stop]}).json()
    assert final["done_reason"] == "stop"
    assert final["message"]["content"] == text[: text.index(stop)]


def test_with_the_ollama_client_streamed_and_not(client: ollama.Client) -> None:
    whole = client.chat(model="llama3.2", messages=USER)
    assert whole.done_reason == "stop"
    assert whole.message.content
    assert whole.eval_count == 24
    assert whole.prompt_eval_count is not None
    assert whole.prompt_eval_count > 1
    parts = list(client.chat(model="llama3.2", messages=USER, stream=True))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done is True
    assert not parts[-1].message.tool_calls  # ollama-python sends "tools": [] on every chat


def test_empty_messages_load_and_unload(http: httpx.Client) -> None:
    load = http.post("/api/chat", json={"model": "llama3.2", "messages": []})
    assert load.headers["content-type"] == "application/json; charset=utf-8"
    body = load.json()
    assert body["done_reason"] == "load"
    assert body["done"] is True
    assert body["message"] == {"role": "assistant", "content": ""}
    unload = http.post("/api/chat", json={"model": "llama3.2", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"messages": USER}, 400, "model is required"),
        ({"model": "nope", "messages": USER}, 404, "model 'nope' not found"),
        ({"model": "all-minilm", "messages": USER}, 400, '"all-minilm" does not support chat'),
        (
            {"model": "llama3.2", "messages": USER, "think": True},
            400,
            '"llama3.2" does not support thinking',
        ),
        (
            {"model": "llama3.2", "messages": USER, "stream": "yes"},
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (
            {"model": "llama3.2", "messages": USER, "format": "xml"},
            400,
            'invalid format: expected "json" or a valid JSON schema',
        ),
    ],
)
def test_request_errors(http: httpx.Client, body: dict[str, Any], status: int, error: str) -> None:
    response = http.post("/api/chat", json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {"error": error}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "missing request body"),
        (b"   ", "missing request body"),
        (
            b'{"model": "llama3.2", x',
            "invalid character 'x' looking for beginning of object key string",
        ),
        (b'{"model": "llama3.2"', "unexpected EOF"),
        (b"nonsense", "invalid character 'o' in literal null (expecting 'u')"),
        (b"[1]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
    ],
)
def test_malformed_bodies(http: httpx.Client, raw: bytes, error: str) -> None:
    response = http.post("/api/chat", content=raw)
    assert response.status_code == 400
    assert response.json() == {"error": error}


def test_unknown_model_raises_response_error(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="nope", messages=USER)
    assert raised.value.status_code == 404
    assert raised.value.error == "model 'nope' not found"


def test_curl_form_content_type_is_parsed_as_json(http: httpx.Client) -> None:
    body = json.dumps({"model": "llama3.2", "messages": USER, "stream": False})
    response = http.post(
        "/api/chat",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json()["done"] is True


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


def test_tools_give_one_tool_call_frame_then_the_final(http: httpx.Client) -> None:
    frames = ndjson_frames(_chat(http, tools=[WEATHER_TOOL]).content)
    assert len(frames) == 2
    call_frame, final = frames
    assert call_frame["done"] is False
    assert call_frame["message"]["content"] == ""
    (call,) = call_frame["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert len(call["id"]) == len("call_") + 8
    assert call["id"][5:].isalnum()
    assert call["function"]["index"] == 0
    assert call["function"]["name"] == "get_weather"
    arguments = call["function"]["arguments"]
    assert isinstance(arguments, dict)
    assert isinstance(arguments["city"], str)
    assert isinstance(arguments["days"], int)
    assert arguments["unit"] == "celsius"
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"]["role"] == "assistant"
    assert final["eval_count"] > 0


def test_tools_with_the_ollama_client(client: ollama.Client) -> None:
    reply = client.chat(model="llama3.2", messages=USER, tools=[WEATHER_TOOL])
    assert reply.message.tool_calls
    assert reply.message.tool_calls[0].function.name == "get_weather"
    assert "city" in reply.message.tool_calls[0].function.arguments


def test_no_tool_call_after_a_tool_result(http: httpx.Client) -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    reply = http.post(
        "/api/chat",
        json={"model": "llama3.2", "messages": messages, "tools": [WEATHER_TOOL], "stream": False},
    ).json()
    assert "tool_calls" not in reply["message"]
    assert reply["message"]["content"]


def test_empty_tools_list_does_not_call_tools(http: httpx.Client) -> None:
    frames = ndjson_frames(_chat(http, tools=[]).content)
    assert len(frames) == 25
    assert not any("tool_calls" in f["message"] for f in frames)


def test_thinking_frames_come_first(http: httpx.Client) -> None:
    frames = ndjson_frames(
        http.post("/api/chat", json={"model": "qwen3:8b", "messages": USER, "think": True}).content
    )
    *tokens, final = frames
    thinking = [f for f in tokens if f["message"].get("thinking")]
    content = [f for f in tokens if f["message"]["content"]]
    assert thinking
    assert content
    assert tokens.index(thinking[-1]) < tokens.index(content[0])
    assert all(f["message"]["content"] == "" for f in thinking)
    assert final["eval_count"] == len(tokens)


def test_thinking_with_the_ollama_client(client: ollama.Client) -> None:
    reply = client.chat(model="qwen3:8b", messages=USER, think=True)
    assert reply.message.thinking
    assert reply.message.content


def test_format_json_gives_valid_json(http: httpx.Client) -> None:
    content = _chat(http, stream=False, format="json").json()["message"]["content"]
    assert isinstance(json.loads(content), dict)


def test_format_schema_gives_matching_json(http: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "age"],
    }
    frames = ndjson_frames(_chat(http, format=schema).content)
    text = "".join(f["message"]["content"] for f in frames)
    value = json.loads(text)
    assert set(value) == {"name", "age", "tags", "ok"}
    assert isinstance(value["name"], str)
    assert isinstance(value["age"], int)
    assert isinstance(value["tags"], list)
    assert value["ok"] is True
    assert frames[-1]["eval_count"] == len(frames) - 1
