"""Several choices and log probabilities, as translation: ``n``, batches of prompts,
``logprobs``/``top_logprobs`` into Ollama's fields, the backend calls a request fans out
to, and whole answers and merged streams checked against the ``openai`` SDK's models."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_choice import Logprobs

from nz_proxy.errors import InvalidRequest
from nz_proxy.fanout import fan_out
from nz_proxy.translation.answers import ChatAnswer, CompletionAnswer
from nz_proxy.translation.framing import SSE_DONE
from nz_proxy.translation.replies import chat_response, completion_response
from nz_proxy.translation.requests import (
    batch_prompts,
    chat_request,
    choice_count,
    completion_request,
)
from nz_proxy.translation.streams import ChatStream, ChoicesStream, CompletionStream
from tests.sse import SseParser

USER: dict[str, Any] = {"role": "user", "content": "hi"}
CHAT: dict[str, Any] = {"model": "llama3.2", "messages": [USER]}
ID = "chatcmpl-abc123"
CREATED = 1_700_000_000


def entry(token: str, logprob: float, *alternatives: tuple[str, float]) -> dict[str, Any]:
    """One of Ollama's token entries."""
    out: dict[str, Any] = {"token": token, "logprob": logprob, "bytes": list(token.encode())}
    if alternatives:
        out["top_logprobs"] = [
            {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in alternatives
        ]
    return out


def chunks_of(body: bytes) -> list[dict[str, Any]]:
    payloads = SseParser().feed(body)
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


# -- requests ------------------------------------------------------------------------


def test_chat_logprobs_become_ollamas_fields() -> None:
    assert chat_request({**CHAT, "logprobs": True})["logprobs"] is True
    native = chat_request({**CHAT, "logprobs": True, "top_logprobs": 5})
    assert (native["logprobs"], native["top_logprobs"]) == (True, 5)
    assert "top_logprobs" not in chat_request({**CHAT, "logprobs": True, "top_logprobs": 0})
    assert "logprobs" not in chat_request({**CHAT, "logprobs": False, "top_logprobs": 0})
    assert choice_count({**CHAT, "n": 3}) == 3
    assert choice_count(CHAT) == 1


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "from 0 to 20"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "from 0 to 20"),
        ({"top_logprobs": 2}, "top_logprobs", "needs 'logprobs': true"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs", "needs 'logprobs': true"),
        ({"logprobs": 1}, "logprobs", "bool"),
        ({"n": 0}, "n", "from 1 to 128"),
        ({"n": 129}, "n", "from 1 to 128"),
        ({"n": "2"}, "n", "from 1 to 128"),
    ],
)
def test_invalid_chat_choices_and_logprobs(
    fields: dict[str, Any], param: str, fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_request({**CHAT, **fields})
    assert info.value.param == param
    assert fragment in info.value.message


def test_completion_batches_and_logprobs() -> None:
    body = {"model": "m", "prompt": ["first", "second"], "logprobs": 3, "n": 2}
    native = completion_request(body)
    assert native["prompt"] == "first"
    assert (native["logprobs"], native["top_logprobs"]) == (True, 3)
    assert batch_prompts(body) == ["first", "second"]
    assert batch_prompts({"model": "m", "prompt": "one"}) == ["one"]
    zero = completion_request({"model": "m", "prompt": "x", "logprobs": 0})
    assert (zero["logprobs"], "top_logprobs" in zero) == (True, False)
    for wrong in (21, -1, True):
        with pytest.raises(InvalidRequest) as info:
            completion_request({"model": "m", "prompt": "x", "logprobs": wrong})
        assert info.value.param == "logprobs"


# -- the calls of a fan-out ----------------------------------------------------------


def test_calls_are_prompt_major_and_each_has_its_own_options() -> None:
    native = {"model": "m", "prompt": "a", "stream": False, "options": {"seed": 7, "top_k": 3}}
    calls = fan_out(native, 2, 8, ["a", "b", "c"])
    assert [(c["prompt"], c["options"]["seed"]) for c in calls] == [
        ("a", 7), ("a", 8), ("b", 7), ("b", 8), ("c", 7), ("c", 8),
    ]  # fmt: skip
    assert all(c["options"]["top_k"] == 3 for c in calls)
    calls[0]["options"]["num_predict"] = 5
    assert "num_predict" not in calls[1]["options"]  # capping one touches no other
    assert native["options"] == {"seed": 7, "top_k": 3}
    # Without a seed, the calls are alike (the backend samples each on its own).
    chat = {"model": "m", "messages": [USER], "stream": True}
    assert fan_out(chat, 3, 8) == [chat] * 3
    assert fan_out(chat, 1, 8)[0] is chat  # one call: the body itself
    top = (1 << 63) - 1
    wrapped = fan_out({**chat, "options": {"seed": top}}, 2, 8)
    assert [c["options"]["seed"] for c in wrapped] == [top, -(1 << 63)]


def test_more_calls_than_the_limit_is_a_400_naming_the_field() -> None:
    native = {"model": "m", "prompt": "a"}
    with pytest.raises(InvalidRequest) as too_many:
        fan_out(native, 9, 8)
    assert (too_many.value.param, too_many.value.message) == ("n", "'n' may be at most 8.")
    with pytest.raises(InvalidRequest) as batch:
        fan_out(native, 3, 8, ["a", "b", "c"])
    assert batch.value.param == "prompt"
    assert "3 prompts with n=3 make 9" in batch.value.message
    assert len(fan_out(native, 4, 8, ["a", "b"])) == 8


# -- whole answers -------------------------------------------------------------------


def test_a_whole_chat_answer_of_several_choices_with_logprobs() -> None:
    natives = [
        {
            "message": {"role": "assistant", "content": "Hi"},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 9,
            "eval_count": 1,
            "logprobs": [entry("Hi", -0.25, ("Hi", -0.25), ("Hey", -1.5))],
        },
        {
            "message": {"role": "assistant", "content": "", "tool_calls": [{"function": {}}]},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 9,
            "eval_count": 4,
        },
    ]
    body = chat_response(natives, model="m", completion_id=ID, created=CREATED, logprobs=True)
    parsed = ChatCompletion.model_validate(body)
    assert [c.index for c in parsed.choices] == [0, 1]
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (18, 5)
    first = parsed.choices[0].logprobs
    assert first is not None
    assert first.content is not None
    [token] = first.content
    assert (token.token, token.logprob, token.bytes) == ("Hi", -0.25, [72, 105])
    assert [(t.token, t.logprob) for t in token.top_logprobs] == [("Hi", -0.25), ("Hey", -1.5)]
    # Asked, none came: an empty list, not null. Tool call ids differ per choice.
    assert body["choices"][1]["logprobs"] == {"content": [], "refusal": None}
    assert body["choices"][1]["message"]["tool_calls"][0]["id"] == "call_abc123_1_0"
    plain = chat_response(natives[0], model="m", completion_id=ID, created=CREATED)
    assert plain["choices"][0]["logprobs"] is None


def test_a_whole_completion_of_a_batch_with_logprobs() -> None:
    natives = [
        {
            "response": "A b",
            "done": True,
            "done_reason": "length",
            "prompt_eval_count": 5,
            "eval_count": 2,
            "logprobs": [entry("A", -0.5, ("A", -0.5), ("The", -2.0)), entry(" b", -1.0)],
        },
        {"response": "", "done": True, "prompt_eval_count": 6, "eval_count": 0},
    ]
    body = completion_response(natives, model="m", completion_id="cmpl-x", created=1, logprobs=True)
    parsed = Completion.model_validate(body)
    assert [(c.index, c.text, c.finish_reason) for c in parsed.choices] == [
        (0, "A b", "length"),
        (1, "", "stop"),
    ]
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (11, 2)
    logprobs = parsed.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["A", " b"]
    assert logprobs.token_logprobs == [-0.5, -1.0]
    assert logprobs.top_logprobs == [{"A": -0.5, "The": -2.0}, {}]
    assert logprobs.text_offset == [0, 1]


def test_garbage_logprobs_read_as_nothing_rather_than_fail() -> None:
    native = {
        "response": "x",
        "done": True,
        "logprobs": [{"token": 3, "logprob": "high", "bytes": [300]}, "junk", {"token": "é"}],
    }
    body = completion_response(native, model="m", completion_id="cmpl-x", created=1, logprobs=True)
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["", "é"]
    assert logprobs["token_logprobs"] == [0.0, 0.0]
    chat = chat_response(
        {"message": {"content": "é"}, "logprobs": [{"token": "é"}]},
        model="m",
        completion_id=ID,
        created=CREATED,
        logprobs=True,
    )
    assert chat["choices"][0]["logprobs"]["content"][0]["bytes"] == [0xC3, 0xA9]  # its UTF-8


# -- streams -------------------------------------------------------------------------


def chat_frames(words: list[str], prompt: int, *, logprobs: bool = False) -> list[bytes]:
    frames: list[dict[str, Any]] = []
    for word in words:
        frame: dict[str, Any] = {"message": {"role": "assistant", "content": word}, "done": False}
        if logprobs:
            frame["logprobs"] = [entry(word, -0.5, (word, -0.5), ("x", -3.0))]
        frames.append(frame)
    frames.append(
        {
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": prompt,
            "eval_count": len(words),
        }
    )
    return [json.dumps(f).encode() for f in frames]


def test_merged_chat_streams_carry_each_choice_index_and_one_usage_chunk() -> None:
    streams = [
        ChatStream(
            model="m",
            completion_id=ID,
            created=CREATED,
            include_usage=True,
            index=i,
            logprobs=True,
            ends=False,
        )
        for i in range(2)
    ]
    merged = ChoicesStream(streams, include_usage=True)
    first, second = chat_frames(["a", "b"], 7, logprobs=True), chat_frames(["c"], 7)
    # Interleaved as two backends would answer.
    out = b"".join(
        [
            merged.feed_choice(1, second[0]),
            merged.feed_choice(0, first[0]),
            merged.feed_choice(0, first[1]),
            merged.feed_choice(1, second[1]),  # choice 1 done: the stream goes on
        ]
    )
    assert not merged.finished
    assert SSE_DONE not in out
    out += merged.feed_choice(0, first[2])
    assert merged.done
    assert out.count(SSE_DONE) == 1
    chunks = chunks_of(out)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    text: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    for chunk in chunks[:-1]:
        [choice] = chunk["choices"]
        index = choice["index"]
        text[index] = text.get(index, "") + (choice["delta"].get("content") or "")
        if choice["logprobs"]:
            tokens.setdefault(index, []).extend(t["token"] for t in choice["logprobs"]["content"])
        if choice["finish_reason"]:
            finish[index] = choice["finish_reason"]
    assert (text, finish) == ({0: "ab", 1: "c"}, {0: "stop", 1: "stop"})
    assert tokens == {0: ["a", "b"]}  # choice 1's backend sent none
    roles = [c["choices"][0]["delta"].get("role") for c in chunks[:-1]]
    assert roles.count("assistant") == 2  # each choice opens with its role
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17}
    assert (merged.prompt_tokens, merged.completion_tokens) == (14, 3)


def test_an_error_in_one_choice_ends_the_merged_stream_once() -> None:
    streams = [
        CompletionStream(model="m", completion_id="cmpl-x", created=1, include_usage=False,
                         index=i, ends=False)
        for i in range(2)
    ]  # fmt: skip
    merged = ChoicesStream(streams, include_usage=False)
    assert merged.feed_choice(0, b'{"response":"a","done":false}')
    failed = merged.feed_choice(1, b'{"error":"runner crashed"}')
    assert failed.startswith(b'data: {"error":')
    assert merged.finished
    assert merged.error_message == "runner crashed"
    assert merged.feed_choice(0, b'{"response":"b","done":false}') == b""
    assert merged.error("again") == b""
    assert merged.content_frames == 1


def test_completion_stream_logprobs_count_offsets_across_chunks() -> None:
    stream = CompletionStream(
        model="m", completion_id="cmpl-x", created=1, include_usage=False, logprobs=True
    )
    lines = [
        {"response": "Hel", "done": False, "logprobs": [entry("Hel", -0.1)]},
        {"response": "", "done": False, "logprobs": [entry("\ufffd", -0.2)]},  # logprobs only
        {"response": "lo", "done": False, "logprobs": [entry("lo", -0.3, ("lo", -0.3))]},
        {"response": "", "done": True, "done_reason": "stop", "eval_count": 3},
    ]
    chunks = chunks_of(b"".join(stream.feed_line(json.dumps(f).encode()) for f in lines))
    logprobs = [c["choices"][0]["logprobs"] for c in chunks]
    for shaped in logprobs[:3]:
        Logprobs.model_validate(shaped, strict=True)
    assert [lp["text_offset"] for lp in logprobs[:3]] == [[0], [3], [4]]
    assert logprobs[2]["top_logprobs"] == [{"lo": -0.3}]
    assert logprobs[3] is None  # the finish chunk carries no token
    assert stream.content_frames == 3  # the logprobs-only frame was a generated token


def test_logprobs_are_left_out_unless_asked() -> None:
    stream = ChatStream(model="m", completion_id=ID, created=CREATED, include_usage=False)
    line = chat_frames(["a"], 1, logprobs=True)[0]
    [chunk] = [json.loads(p) for p in SseParser().feed(stream.feed_line(line))]
    assert chunk["choices"][0]["logprobs"] is None


def test_answers_count_every_choice_that_was_answered() -> None:
    answer = ChatAnswer("m", False, choices=3)
    for line in chat_frames(["a", "b"], 7):
        answer.choice_line(0, line)
    answer.choice_line(1, chat_frames(["c", "d", "e"], 8)[0])  # cut after one frame
    # Choice 0 finished (its counts), 1 was cut (its estimate, one frame), 2 never spoke.
    assert answer.choices_usage([10, 11, 12], [True, True, False]) == (7 + 11, 2 + 1)
    whole = CompletionAnswer("m", False, choices=2)
    whole.read_choice(0, json.dumps({"response": "x", "done": True, "eval_count": 4,
                                     "prompt_eval_count": 3}).encode())  # fmt: skip
    assert whole.choices_usage([5, 6], [True, True]) == (3 + 6, 4)  # 1 answered, unread
