"""Hypothesis strategies shared by the whole test suite (the project's one such module).

Import from ``tests.strategies``. Keep each strategy small and named for the value it
draws; group them by the area they serve. Sections: JSON values, byte chunking, OpenAI
requests, Ollama native frames, embeddings, and the nz_core domain (keys, limits, model
names, budget periods).
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from nz_core.budgets import Period, PeriodState
from nz_core.limits import Limits

# --------------------------------------------------------------------------- JSON

# Integers stay within what every JSON stack (Go's included) round-trips exactly.
json_scalars: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)

json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)

json_objects: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(max_size=8), json_values, max_size=5
)

# Text that exercises multi-byte UTF-8 (accents, CJK, emoji) as well as ASCII.
unicode_text = st.text(
    alphabet=st.sampled_from('ab z\n\t"\\é中文🙂\u2028') | st.characters(codec="utf-8"),
    max_size=30,
)


# --------------------------------------------------------------------------- bytes


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary byte offsets (mid UTF-8 character, mid CRLF, …).

    Sometimes one byte per chunk, sometimes a few random cuts, sometimes empty chunks
    too; the pieces always join back to ``data``.
    """
    if data and len(data) <= 64 and draw(st.booleans()):
        return [data[i : i + 1] for i in range(len(data))]
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12))
    bounds = [0, *sorted(cuts), len(data)]  # repeated cuts give empty chunks
    return [data[a:b] for a, b in pairwise(bounds)]


# --------------------------------------------------------------------------- OpenAI requests

positive_ints = st.integers(min_value=1, max_value=2**31)
tool_names = st.sampled_from(["get_weather", "search", "add", "lookup_user"])
tool_call_ids = st.sampled_from(["call_1", "call_2", "call_3", "call_x"])


def _text_content(draw: st.DrawFn) -> Any:
    """OpenAI message content: a string, null, or an array of text parts."""
    kind = draw(st.sampled_from(["str", "null", "parts"]))
    if kind == "str":
        return draw(unicode_text)
    if kind == "null":
        return None
    texts = draw(st.lists(unicode_text, max_size=3))
    return [{"type": "text", "text": text} for text in texts]


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Chat histories mixing user turns, assistant tool calls and tool results.

    Tool call ids come from a small pool so they repeat (the latest earlier call must
    win) and tool results may name an id no earlier assistant used (no ``tool_name``)
    or carry an explicit ``name`` (which takes precedence).
    """
    messages: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
        message: dict[str, Any] = {"role": role, "content": _text_content(draw)}
        if role == "assistant" and draw(st.booleans()):
            message["tool_calls"] = [
                {
                    "id": draw(tool_call_ids),
                    "type": "function",
                    "function": {"name": draw(tool_names), "arguments": "{}"},
                }
                for _ in range(draw(st.integers(min_value=1, max_value=3)))
            ]
        if role == "tool":
            message["tool_call_id"] = draw(tool_call_ids)
            if draw(st.integers(min_value=0, max_value=4)) == 0:
                message["name"] = draw(tool_names)
        messages.append(message)
    return messages


# The top-level fields of a chat request, for fuzzing each with arbitrary JSON.
chat_fields = st.sampled_from(
    [
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "stop",
        "tools",
        "tool_choice",
        "response_format",
        "reasoning_effort",
        "reasoning",
        "options",
        "keep_alive",
        "format",
        "think",
        "n",
        "user",
        "logit_bias",
    ]
)


@st.composite
def fuzzed_messages(draw: st.DrawFn) -> Any:
    """``messages`` arrays whose items have arbitrary JSON in plausible places."""
    items = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        item: dict[str, Any] = {
            "role": draw(
                st.sampled_from(["user", "assistant", "tool", "system", "x"]) | json_values
            )
        }
        for key in ("content", "tool_calls", "tool_call_id", "name", "reasoning"):
            if draw(st.booleans()):
                item[key] = draw(
                    json_values
                    | st.lists(
                        st.fixed_dictionaries(
                            {"type": st.sampled_from(["text", "image_url", "x"]) | json_values},
                            optional={
                                "text": json_values,
                                "image_url": json_values,
                                "function": json_values,
                                "id": json_values,
                            },
                        ),
                        max_size=2,
                    )
                )
        items.append(item)
    return items


# --------------------------------------------------------------------------- Ollama frames

done_reasons = st.sampled_from(["stop", "length", None, "load"])


@st.composite
def native_tool_calls(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Native tool calls: arguments are objects; ``id`` is sometimes missing."""
    calls = []
    for index in range(draw(st.integers(min_value=1, max_value=2))):
        call: dict[str, Any] = {
            "function": {"index": index, "name": draw(tool_names), "arguments": draw(json_objects)}
        }
        if draw(st.booleans()):
            call["id"] = f"call_{draw(st.integers(min_value=0, max_value=10**6))}"
        calls.append(call)
    return calls


@st.composite
def native_chat_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """An ``/api/chat`` stream: content frames, then one ``done: true`` frame.

    Frames may be empty, carry thinking or whole tool calls; the final frame may carry
    content itself, and its counts and ``done_reason`` may be missing.
    """
    frames: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        message: dict[str, Any] = {"role": "assistant", "content": draw(unicode_text)}
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            message["thinking"] = draw(unicode_text)
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            message["tool_calls"] = draw(native_tool_calls())
        frames.append(
            {"model": "m", "created_at": "2025-01-01T00:00:00Z", "message": message, "done": False}
        )
    final: dict[str, Any] = {
        "model": "m",
        "created_at": "2025-01-01T00:00:01Z",
        "message": {"role": "assistant", "content": draw(st.sampled_from(["", "", "end"]))},
        "done": True,
    }
    reason = draw(done_reasons)
    if reason is not None:
        final["done_reason"] = reason
    for key in ("prompt_eval_count", "eval_count", "total_duration"):
        if draw(st.integers(min_value=0, max_value=4)):
            final[key] = draw(st.integers(min_value=1, max_value=10**6))
    frames.append(final)
    return frames


@st.composite
def native_generate_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """An ``/api/generate`` stream: ``response`` frames (maybe thinking), then the final one."""
    frames: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        frame: dict[str, Any] = {"model": "m", "response": draw(unicode_text), "done": False}
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            frame["thinking"] = draw(unicode_text)
        frames.append(frame)
    final: dict[str, Any] = {
        "model": "m",
        "response": draw(st.sampled_from(["", "", "tail"])),
        "done": True,
        "context": [1, 2, 3],
    }
    reason = draw(done_reasons)
    if reason is not None:
        final["done_reason"] = reason
    for key in ("prompt_eval_count", "eval_count"):
        if draw(st.integers(min_value=0, max_value=4)):
            final[key] = draw(st.integers(min_value=1, max_value=10**6))
    frames.append(final)
    return frames


# --------------------------------------------------------------------------- embeddings

# Values exactly representable as float32, as Ollama's vectors are.
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)

embedding_batches: st.SearchStrategy[list[list[float]]] = st.lists(
    st.lists(float32s, min_size=1, max_size=16), min_size=1, max_size=5
)


# --------------------------------------------------------------------------- nz_core domain

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def api_keys() -> st.SearchStrategy[str]:
    """Well-formed keys: ``nz_`` + 52 base62 characters."""
    return st.text(alphabet=_BASE62, min_size=52, max_size=52).map(lambda body: "nz_" + body)


def not_api_keys() -> st.SearchStrategy[str]:
    """Text that is not a key: wrong length, marker or alphabet, or near misses."""
    near_misses = api_keys().flatmap(
        lambda key: st.one_of(
            st.just(key[:-1]),
            st.just(key + "x"),
            st.just("NZ" + key[2:]),
            st.just(" " + key[1:]),
            st.just(key[:-1] + "\n"),
            st.integers(3, 54).flatmap(
                lambda i: st.sampled_from("-_+/=!é\x00 ").map(lambda c: key[:i] + c + key[i + 1 :])
            ),
        )
    )
    return st.one_of(st.text(max_size=80), near_misses).filter(
        lambda t: not (len(t) == 55 and t.startswith("nz_") and all(c in _BASE62 for c in t[3:]))
    )


def limit_sets() -> st.SearchStrategy[Limits]:
    value = st.none() | st.integers(min_value=1, max_value=10**9)
    return st.builds(Limits, rpm=value, tpm=value, concurrent=value)


def model_names() -> st.SearchStrategy[str]:
    """Ollama-style ``[namespace/]model[:tag]`` names, in any case."""
    part = st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
        min_size=1,
        max_size=12,
    )
    namespace = st.none() | part
    tag = st.none() | part
    return st.builds(
        lambda ns, name, t: (f"{ns}/" if ns else "") + name + (f":{t}" if t else ""),
        namespace,
        part,
        tag,
    )


def zones() -> st.SearchStrategy[ZoneInfo]:
    """Timezones with odd offsets and DST rules, plus UTC."""
    return st.sampled_from(
        [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Asia/Kolkata",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "America/Santiago",
            "Asia/Kathmandu",
        ]
    ).map(ZoneInfo)


def aware_datetimes() -> st.SearchStrategy[datetime]:
    return st.datetimes(
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    )


def period_states() -> st.SearchStrategy[PeriodState]:
    return st.builds(
        PeriodState,
        period=st.sampled_from(list(Period)),
        limit=st.integers(min_value=0, max_value=10**6),
        used=st.integers(min_value=0, max_value=2 * 10**6),
    )
