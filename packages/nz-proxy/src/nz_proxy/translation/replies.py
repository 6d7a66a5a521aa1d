"""Whole answers, native → OpenAI: a non-streamed chat completion, a legacy completion
(each with one choice per backend answer: ``n``, a batch of prompts), an embeddings
list and model objects, and the pieces the stream translators share
(:mod:`nz_proxy.translation.streams`), token log probabilities among them.

Nothing here does I/O, reads a clock or logs: callers pass ``created`` timestamps and
completion ids in (:func:`new_completion_id` is the one source of randomness).
"""

from __future__ import annotations

import base64
import secrets
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from nz_proxy.errors import InvalidRequest

__all__ = [
    "arguments_json",
    "call_id_base",
    "chat_finish",
    "chat_logprobs",
    "chat_response",
    "completion_response",
    "embeddings_response",
    "model_object",
    "models_list",
    "new_completion_id",
    "response_tool_calls",
    "text_finish",
    "text_logprobs",
    "token_count",
    "usage_object",
]

_encode = msgspec.json.Encoder().encode


def new_completion_id(prefix: str = "chatcmpl") -> str:
    """A fresh id ``<prefix>-<24 hex digits>`` (96 random bits), unique per request.

    Use ``"chatcmpl"`` for chat and ``"cmpl"`` for legacy completions. Ollama's own layer
    uses ``chatcmpl-<0..998>``, which collides; clients key caches on these ids.
    """
    return f"{prefix}-{secrets.token_hex(12)}"


def call_id_base(completion_id: str, choice: int = 0) -> str:
    # Tool call ids are derived from the (unique) completion id, so the response
    # functions stay deterministic: ``chatcmpl-ab12`` → ``call_ab12_0``, ``call_ab12_1``;
    # the calls of choice 2 are ``call_ab12_2_0``, ….
    base = completion_id.rpartition("-")[2] or completion_id
    return f"{base}_{choice}" if choice else base


def token_count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_object(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _native_usage(native: Mapping[str, Any]) -> dict[str, int]:
    return usage_object(
        token_count(native.get("prompt_eval_count")), token_count(native.get("eval_count"))
    )


def _token(entry: Mapping[str, Any]) -> tuple[str, float, list[int]]:
    """(token, logprob, UTF-8 bytes) of one of Ollama's token entries; what is missing
    or malformed reads as nothing (bytes: the token's own)."""
    token = entry.get("token")
    token = token if isinstance(token, str) else ""
    logprob = entry.get("logprob")
    value = 0.0
    if isinstance(logprob, int | float) and not isinstance(logprob, bool):
        value = float(logprob)
    raw = entry.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return token, value, raw
    return token, value, list(token.encode("utf-8", "surrogatepass"))


def _entries(logprobs: object) -> list[Mapping[str, Any]]:
    return [e for e in logprobs if isinstance(e, Mapping)] if isinstance(logprobs, list) else []


def chat_logprobs(logprobs: object) -> dict[str, Any]:
    """Ollama's ``logprobs`` (a list of token entries) as a chat choice's ``logprobs``:
    ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal":
    null}``; ``top_logprobs`` is ``[]`` when no alternatives were asked for."""
    content = []
    for entry in _entries(logprobs):
        token, value, raw = _token(entry)
        top = []
        for alternative in _entries(entry.get("top_logprobs")):
            alt_token, alt_value, alt_raw = _token(alternative)
            top.append({"token": alt_token, "logprob": alt_value, "bytes": alt_raw})
        content.append({"token": token, "logprob": value, "bytes": raw, "top_logprobs": top})
    return {"content": content, "refusal": None}


def text_logprobs(logprobs: object, offset: int = 0) -> tuple[dict[str, Any], int]:
    """Ollama's ``logprobs`` as a legacy completion choice's: ``{"tokens",
    "token_logprobs", "top_logprobs" (alternative → logprob, per token), "text_offset"}``,
    offsets counted from ``offset`` (the text before, in a stream); and the offset
    after the last token."""
    tokens: list[str] = []
    values: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    for entry in _entries(logprobs):
        token, value, _ = _token(entry)
        tokens.append(token)
        values.append(value)
        tops.append({t: v for t, v, _ in map(_token, _entries(entry.get("top_logprobs")))})
        offsets.append(offset)
        offset += len(token)
    shaped = {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops}
    return shaped | {"text_offset": offsets}, offset


def chat_finish(done_reason: object, has_tool_calls: bool) -> str:
    if done_reason == "length":
        return "length"
    return "tool_calls" if has_tool_calls else "stop"


def text_finish(done_reason: object) -> str:
    return "length" if done_reason == "length" else "stop"


def arguments_json(arguments: object) -> str:
    """Native (object) arguments as OpenAI's JSON string."""
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        return arguments  # already a string: do not double-encode
    return _encode(arguments).decode()


def response_tool_calls(
    calls: Iterable[object], id_base: str, first_index: int, *, with_index: bool
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    index = first_index
    for call in calls:
        if not isinstance(call, Mapping):
            continue
        function = call.get("function")
        if not isinstance(function, Mapping):
            function = {}
        name = function.get("name")
        call_id = call.get("id")
        item: dict[str, Any] = {
            "id": call_id if isinstance(call_id, str) and call_id else f"call_{id_base}_{index}",
            "type": "function",
            "function": {
                "name": name if isinstance(name, str) else "",
                "arguments": arguments_json(function.get("arguments")),
            },
        }
        if with_index:
            item["index"] = index
        out.append(item)
        index += 1
    return out


def _usage_of(natives: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return usage_object(
        sum(token_count(native.get("prompt_eval_count")) for native in natives),
        sum(token_count(native.get("eval_count")) for native in natives),
    )


def chat_response(
    native: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    model: str,
    completion_id: str,
    created: int,
    logprobs: bool = False,
) -> dict[str, Any]:
    """A ``chat.completion`` for a non-streamed ``/api/chat`` answer, or for several
    (one choice each, ``index`` in their order; ``usage`` sums them).

    ``content`` is null when the reply is only tool calls (OpenAI's shape; Ollama's layer
    sends ``""``); thinking goes to the non-standard ``message.reasoning`` as Ollama's
    layer does. Tool calls keep their native ``id`` or get ``call_<id suffix>_<n>``.
    ``finish_reason``: ``length`` stays, otherwise ``tool_calls`` when calls came back,
    else ``stop``. ``logprobs`` (when asked) per :func:`chat_logprobs`, else null.
    ``usage`` is always present; missing counts are 0. ``model`` is the name the client
    asked for.
    """
    natives = [native] if isinstance(native, Mapping) else list(native)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [
            _chat_choice(one, index, call_id_base(completion_id, index), logprobs)
            for index, one in enumerate(natives)
        ],
        "usage": _usage_of(natives),
    }


def _chat_choice(
    native: Mapping[str, Any], index: int, id_base: str, logprobs: bool
) -> dict[str, Any]:
    message = native.get("message")
    if not isinstance(message, Mapping):
        message = {}
    content = message.get("content")
    if not isinstance(content, str):
        content = ""
    calls = message.get("tool_calls")
    tool_calls = (
        response_tool_calls(calls, id_base, 0, with_index=False) if isinstance(calls, list) else []
    )
    out_message: dict[str, Any] = {
        "role": "assistant",
        "content": None if tool_calls and not content else content,
        "refusal": None,
    }
    thinking = message.get("thinking")
    if isinstance(thinking, str) and thinking:
        out_message["reasoning"] = thinking
    if tool_calls:
        out_message["tool_calls"] = tool_calls
    return {
        "index": index,
        "message": out_message,
        "logprobs": chat_logprobs(native.get("logprobs")) if logprobs else None,
        "finish_reason": chat_finish(native.get("done_reason"), bool(tool_calls)),
    }


def completion_response(
    native: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    model: str,
    completion_id: str,
    created: int,
    logprobs: bool = False,
) -> dict[str, Any]:
    """A ``text_completion`` for a non-streamed ``/api/generate`` answer, or for several
    (one choice each, ``index`` in their order; ``usage``, always there, sums them).
    ``logprobs`` (when asked) per :func:`text_logprobs`, else null."""
    natives = [native] if isinstance(native, Mapping) else list(native)
    choices = []
    for index, one in enumerate(natives):
        text = one.get("response")
        choices.append(
            {
                "text": text if isinstance(text, str) else "",
                "index": index,
                "logprobs": text_logprobs(one.get("logprobs"))[0] if logprobs else None,
                "finish_reason": text_finish(one.get("done_reason")),
            }
        )
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": choices,
        "usage": _usage_of(natives),
    }


def _base64_floats(vector: list[float]) -> str:
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()  # the wire format is little-endian float32
    return base64.b64encode(packed.tobytes()).decode("ascii")


def embeddings_response(
    native: Mapping[str, Any], *, model: str, encoding_format: str
) -> dict[str, Any]:
    """An OpenAI embeddings list for an ``/api/embed`` answer.

    ``encoding_format`` ``"base64"`` (any case) packs each vector as little-endian
    float32, standard base64 alphabet, as the SDK decodes it; otherwise floats are
    passed through. ``usage`` counts ``prompt_eval_count`` as prompt and total tokens.

    ``data`` is never empty (the SDK raises on that). If Ollama returns no vectors,
    which it does for empty input it treats as "just load the model", this raises
    :class:`InvalidRequest` (param ``input``) rather than inventing a vector of unknown
    dimension or answering with an empty ``data``.
    """
    vectors = native.get("embeddings")
    if not isinstance(vectors, list) or not vectors:
        raise InvalidRequest(
            "The model returned no embedding for this input (empty text cannot be embedded).",
            param="input",
        )
    packed = encoding_format.lower() == "base64"
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _base64_floats(vector) if packed else vector,
        }
        for index, vector in enumerate(vectors)
    ]
    tokens = token_count(native.get("prompt_eval_count"))
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def model_object(name: str, modified_at_unix: int) -> dict[str, Any]:
    """One OpenAI model object; ``owned_by`` is the namespace before ``/`` or ``library``."""
    namespace = name.rsplit("/", 2)[-2] if "/" in name else "library"
    return {
        "id": name,
        "object": "model",
        "created": modified_at_unix,
        "owned_by": namespace or "library",
    }


def models_list(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """OpenAI list form; ``data`` is ``[]`` (never null) when there are no models."""
    return {"object": "list", "data": list(objects)}
