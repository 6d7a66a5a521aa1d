"""Whole answers, native → OpenAI: a non-streamed chat completion, a legacy completion,
an embeddings list and model objects, and the pieces the stream translators share
(:mod:`nz_proxy.translation.streams`).

Nothing here does I/O, reads a clock or logs: callers pass ``created`` timestamps and
completion ids in (:func:`new_completion_id` is the one source of randomness).
"""

from __future__ import annotations

import base64
import secrets
import sys
from array import array
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from nz_proxy.errors import InvalidRequest

__all__ = [
    "arguments_json",
    "call_id_base",
    "chat_finish",
    "chat_response",
    "completion_response",
    "embeddings_response",
    "model_object",
    "models_list",
    "new_completion_id",
    "response_tool_calls",
    "text_finish",
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


def call_id_base(completion_id: str) -> str:
    # Tool call ids are derived from the (unique) completion id, so the response
    # functions stay deterministic: ``chatcmpl-ab12`` → ``call_ab12_0``, ``call_ab12_1``.
    return completion_id.rpartition("-")[2] or completion_id


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


def chat_response(
    native: Mapping[str, Any], *, model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """A ``chat.completion`` for a non-streamed ``/api/chat`` answer.

    ``content`` is null when the reply is only tool calls (OpenAI's shape; Ollama's layer
    sends ``""``); thinking goes to the non-standard ``message.reasoning`` as Ollama's
    layer does. Tool calls keep their native ``id`` or get ``call_<id suffix>_<n>``.
    ``finish_reason``: ``length`` stays, otherwise ``tool_calls`` when calls came back,
    else ``stop``. ``usage`` is always present; missing counts are 0. ``model`` is the
    name the client asked for.
    """
    message = native.get("message")
    if not isinstance(message, Mapping):
        message = {}
    content = message.get("content")
    if not isinstance(content, str):
        content = ""
    calls = message.get("tool_calls")
    tool_calls = (
        response_tool_calls(calls, call_id_base(completion_id), 0, with_index=False)
        if isinstance(calls, list)
        else []
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
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "index": 0,
                "message": out_message,
                "logprobs": None,
                "finish_reason": chat_finish(native.get("done_reason"), bool(tool_calls)),
            }
        ],
        "usage": usage_object(
            token_count(native.get("prompt_eval_count")), token_count(native.get("eval_count"))
        ),
    }


def completion_response(
    native: Mapping[str, Any], *, model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """A ``text_completion`` for a non-streamed ``/api/generate`` answer (usage always)."""
    text = native.get("response")
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "text": text if isinstance(text, str) else "",
                "index": 0,
                "logprobs": None,
                "finish_reason": text_finish(native.get("done_reason")),
            }
        ],
        "usage": usage_object(
            token_count(native.get("prompt_eval_count")), token_count(native.get("eval_count"))
        ),
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
