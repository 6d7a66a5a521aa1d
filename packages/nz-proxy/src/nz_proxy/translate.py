"""OpenAI ⇄ Ollama native translation, as pure functions and small state machines.

Nothing here does I/O, reads a clock or logs: callers pass ``created`` timestamps and
completion ids in (:func:`new_completion_id` is the one source of randomness). Every
request problem is an :class:`~nz_proxy.errors.InvalidRequest` whose ``param`` names the
field, so the gateway answers a clear 400 instead of forwarding something Ollama would
reject with a Go decoder message (or, worse, silently misread).

Requests (OpenAI body already decoded from JSON → native body):
    :func:`chat_request` (``/v1/chat/completions`` → ``/api/chat``),
    :func:`completion_request` (``/v1/completions`` → ``/api/generate``),
    :func:`embeddings_request` (``/v1/embeddings`` → ``/api/embed``),
    :func:`include_usage` (``stream_options.include_usage``).
Admission helpers on native bodies of every upstream endpoint:
    :func:`requested_completion_cap`, :func:`apply_completion_cap`, :func:`prompt_text_bytes`.
Responses (native → OpenAI):
    :func:`chat_response`, :class:`ChatStream`, :func:`completion_response`,
    :class:`CompletionStream`, :func:`embeddings_response`, :func:`model_object`,
    :func:`models_list`; for NDJSON passthrough :class:`NativeStreamTap` and
    :func:`native_error_line`.

Where WIRE.md leaves a choice, the decision is documented on the function concerned. The
main ones: unlike Ollama's own layer we never default ``temperature``/``top_p``, read
``max_completion_tokens``, mint unique ids, and send ``content: null`` when a reply is
only tool calls.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
import sys
from array import array
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

from nz_proxy.errors import InvalidRequest
from nz_proxy.framing import SSE_DONE
from nz_proxy.openapi import Base64, Format, KeepAlive, Options, Think, Tool, conform

__all__ = [
    "ChatStream",
    "CompletionStream",
    "NativeStreamTap",
    "apply_completion_cap",
    "chat_request",
    "chat_response",
    "completion_request",
    "completion_response",
    "embeddings_request",
    "embeddings_response",
    "include_usage",
    "model_object",
    "models_list",
    "native_error_line",
    "new_completion_id",
    "prompt_text_bytes",
    "requested_completion_cap",
]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

_INT64_MAX: Final = 2**63 - 1
_INT64_MIN: Final = -(2**63)
_MAX_EMBED_INPUTS: Final = 2048

_ROLES: Final = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
# What Ollama itself accepts (its layer and its image decoder); ``data:;base64,`` is its
# spelling for "bare base64, type unknown".
_IMAGE_PREFIXES: Final = (
    "data:image/png;base64,",
    "data:image/jpeg;base64,",
    "data:image/jpg;base64,",
    "data:image/webp;base64,",
    "data:;base64,",
)
# OpenAI's effort names onto Ollama's ``think`` (WIRE.md §2).
_EFFORT: Final[dict[str, bool | str]] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
_ID_ARRAYS_REFUSED: Final = (
    "Token-id arrays are not supported as 'input'; send the text itself. LangChain's "
    "OpenAIEmbeddings sends token arrays by default: set check_embedding_ctx_length=False."
)


# --------------------------------------------------------------------------- ids


def new_completion_id(prefix: str = "chatcmpl") -> str:
    """A fresh id ``<prefix>-<24 hex digits>`` (96 random bits), unique per request.

    Use ``"chatcmpl"`` for chat and ``"cmpl"`` for legacy completions. Ollama's own layer
    uses ``chatcmpl-<0..998>``, which collides; clients key caches on these ids.
    """
    return f"{prefix}-{secrets.token_hex(12)}"


def _call_id_base(completion_id: str) -> str:
    # Tool call ids are derived from the (unique) completion id, so the response
    # functions stay deterministic: ``chatcmpl-ab12`` → ``call_ab12_0``, ``call_ab12_1``.
    return completion_id.rpartition("-")[2] or completion_id


# --------------------------------------------------------------------------- field checks


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    return model


def _body(body: object) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _stream(body: Mapping[str, Any]) -> bool:
    value = body.get("stream")
    if value is None:
        return False  # OpenAI's default; the native default would be true.
    if not isinstance(value, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    return value


def include_usage(body: Mapping[str, Any]) -> bool:
    """``stream_options.include_usage`` of an OpenAI body (false when absent).

    Raises :class:`InvalidRequest` (param ``stream_options`` or
    ``stream_options.include_usage``) on a wrong type. Only meaningful with ``stream``.
    """
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, Mapping):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    value = options.get("include_usage")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(
            "'stream_options.include_usage' must be a boolean.",
            param="stream_options.include_usage",
        )
    return value


def _positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # Zero and negatives are refused: Ollama reads num_predict <= 0 as "no limit".
    if not _is_int(value) or not 1 <= value <= _INT64_MAX:
        raise InvalidRequest(f"'{key}' must be a positive integer.", param=key)
    result: int = value
    return result


def _bounded_number(
    body: Mapping[str, Any], key: str, low: float, high: float
) -> int | float | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_number(value) or not low <= value <= high:
        raise InvalidRequest(f"'{key}' must be a number between {low:g} and {high:g}.", param=key)
    result: int | float = value
    return result


def _stop(value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value or None
    raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")


def _sampling_options(body: Mapping[str, Any], *, chat: bool) -> dict[str, Any]:
    """The OpenAI sampling fields as Ollama ``options`` (only those the client gave)."""
    options: dict[str, Any] = {}
    max_tokens = _positive_int(body, "max_tokens")
    if chat:
        # The newer name wins; Ollama's own layer ignores it altogether.
        newer = _positive_int(body, "max_completion_tokens")
        if newer is not None:
            max_tokens = newer
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    # temperature and top_p only when given: defaulting them (as Ollama's layer does,
    # to 1.0) would override the Modelfile's tuned values.
    for key, low, high in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("frequency_penalty", -2.0, 2.0),
        ("presence_penalty", -2.0, 2.0),
    ):
        value = _bounded_number(body, key, low, high)
        if value is not None:
            options[key] = value
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed) or not _INT64_MIN <= seed <= _INT64_MAX:
            raise InvalidRequest("'seed' must be an integer.", param="seed")
        options["seed"] = seed
    stop = _stop(body.get("stop"))
    if stop is not None:
        options["stop"] = stop
    return options


# Ollama's own fields, checked against the types the native surface is checked against.
_PASSTHROUGH: Final[dict[str, Any]] = {
    "keep_alive": KeepAlive,
    "format": Format,
    "think": Think,
    "truncate": bool,
    "images": list[Base64],
}


def _passthrough(
    body: Mapping[str, Any], native: dict[str, Any], mapped: dict[str, Any], keys: Iterable[str]
) -> None:
    """Copy Ollama's own fields the client sent, and merge ``options``.

    The client's ``options`` are kept; the fields mapped from OpenAI names override the
    same keys. Each is checked as ``/api`` checks it (:mod:`nz_proxy.openapi`), so
    Ollama never sees a shape it would refuse with a Go unmarshal error.
    """
    client_options = body.get("options")
    if client_options is not None and not isinstance(client_options, Mapping):
        raise InvalidRequest("'options' must be an object.", param="options")
    if client_options:
        conform(client_options, Options, "options")
        native["options"] = {**client_options, **mapped}
    elif mapped:
        native["options"] = mapped
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        conform(value, _PASSTHROUGH[key], key)
        native[key] = value


# --------------------------------------------------------------------------- chat request


def chat_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """Translate a ``/v1/chat/completions`` body into an ``/api/chat`` body.

    The native body always carries an explicit ``stream`` boolean (OpenAI's default is
    false, Ollama's true). Mapped: ``messages`` (see below), ``tools``,
    ``max_completion_tokens`` (preferred) or ``max_tokens`` → ``options.num_predict``,
    ``temperature``, ``top_p``, ``frequency_penalty``, ``presence_penalty``, ``seed``,
    ``stop`` → ``options``; ``response_format`` → ``format``; ``reasoning_effort`` (or
    ``reasoning.effort``) → ``think``. Ollama's own ``options``, ``keep_alive``,
    ``format`` and ``think`` pass through; mapped values win on conflict. Everything
    else (``n``, ``user``, ``logit_bias``, ``logprobs``, ``parallel_tool_calls``, …) is
    dropped; ``tool_choice: "none"`` drops ``tools`` so the model cannot call one.

    Messages: ``developer`` becomes ``system``. Content may be a string, null or an
    array of parts; as in Ollama's layer each ``text`` part and each image becomes its
    own native message with the same role (images as base64 payloads in ``images``).
    Assistant ``tool_calls[].function.arguments`` (a JSON string) become objects; tool
    calls and ``reasoning`` (→ ``thinking``) sit on the last native message of their
    group. Each native message of a tool result carries ``tool_call_id`` and
    ``tool_name``: the message's ``name``, else the function name of the latest earlier
    assistant tool call with that id (none if there is no such call).

    Raises :class:`InvalidRequest` with ``param`` naming the offending field.
    """
    body = _body(body)
    native: dict[str, Any] = {
        "model": _model(body),
        "messages": _chat_messages(body.get("messages")),
        "stream": _stream(body),
    }
    include_usage(body)  # validated here so every 400 comes from one place
    tools = _tools(body)
    if tools:
        native["tools"] = tools
    _passthrough(
        body, native, _sampling_options(body, chat=True), ("keep_alive", "format", "think")
    )
    fmt = _response_format(body.get("response_format"))
    if fmt is not None:
        native["format"] = fmt
    think = _reasoning(body)
    if think is not None:
        native["think"] = think
    return native


def _chat_messages(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool call id → function name, latest wins
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        role = message.get("role")
        native_role = _ROLES.get(role) if isinstance(role, str) else None
        if native_role is None:
            raise InvalidRequest(
                f"'{where}.role' must be one of system, developer, user, assistant, tool.",
                param=f"{where}.role",
            )
        group = _content_messages(native_role, message.get("content"), where)
        last = group[-1]
        if native_role == "assistant":
            calls = message.get("tool_calls")
            if calls is not None:
                native_calls = _request_tool_calls(calls, where, call_names)
                if native_calls:
                    last["tool_calls"] = native_calls
            reasoning = message.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                last["thinking"] = reasoning
        elif native_role == "tool":
            _tool_result_fields(message, group, where, call_names)
        out.extend(group)
    return out


def _tool_result_fields(
    message: Mapping[str, Any],
    group: list[dict[str, Any]],
    where: str,
    call_names: Mapping[str, str],
) -> None:
    call_id = message.get("tool_call_id")
    if call_id is not None and not isinstance(call_id, str):
        raise InvalidRequest(
            f"'{where}.tool_call_id' must be a string.", param=f"{where}.tool_call_id"
        )
    name = message.get("name")
    if not isinstance(name, str) or not name:
        name = call_names.get(call_id) if call_id else None
    for native in group:
        if name:
            native["tool_name"] = name
        if call_id:
            native["tool_call_id"] = call_id


def _content_messages(role: str, content: object, where: str) -> list[dict[str, Any]]:
    """One or more native messages for one OpenAI message's content (never none)."""
    if content is None:
        return [{"role": role, "content": ""}]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{where}.content' must be a string, null or an array of content parts.",
            param=f"{where}.content",
        )
    group: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise InvalidRequest(f"'{at}.{kind}' must be a string.", param=f"{at}.{kind}")
            group.append({"role": role, "content": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str):
                raise InvalidRequest(
                    f"'{at}.image_url.url' must be a string.", param=f"{at}.image_url"
                )
            group.append({"role": role, "content": "", "images": [_image_payload(url, at)]})
        else:
            raise InvalidRequest(
                f"'{at}' has an unsupported type; use 'text' or 'image_url' parts.",
                param=f"{at}.type",
            )
    return group or [{"role": role, "content": ""}]


def _image_payload(url: str, at: str) -> str:
    """The base64 payload of a ``data:`` image URI, checked to decode."""
    if url.startswith(("http://", "https://")):
        raise InvalidRequest(
            "Image URLs are not supported; send the image inline as a "
            "'data:image/png;base64,...' URI (png, jpeg or webp).",
            param=f"{at}.image_url",
        )
    for prefix in _IMAGE_PREFIXES:
        if url.startswith(prefix):
            payload = url[len(prefix) :]
            break
    else:
        raise InvalidRequest(
            "Unsupported image; send a 'data:image/png;base64,...' URI (png, jpeg or webp).",
            param=f"{at}.image_url",
        )
    try:
        ok = bool(binascii.a2b_base64(payload, strict_mode=True))
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise InvalidRequest("The image is not valid base64 data.", param=f"{at}.image_url")
    return payload


def _request_tool_calls(
    calls: object, where: str, call_names: dict[str, str]
) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise InvalidRequest(f"'{where}.tool_calls' must be an array.", param=f"{where}.tool_calls")
    native_calls: list[dict[str, Any]] = []
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            raise InvalidRequest(f"'{at}.function' must be an object.", param=f"{at}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(
                f"'{at}.function.name' must be a non-empty string.", param=f"{at}.function.name"
            )
        native: dict[str, Any] = {
            "function": {"name": name, "arguments": _parse_arguments(function.get("arguments"), at)}
        }
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            native["id"] = call_id
            call_names[call_id] = name
        native_calls.append(native)
    return native_calls


def _parse_arguments(raw: object, at: str) -> dict[str, Any]:
    """OpenAI's JSON-string arguments as the object Ollama wants (``""`` means none)."""
    if isinstance(raw, Mapping):
        return dict(raw)  # some clients already send an object
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            parsed = _decode(raw)
        except (msgspec.DecodeError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    raise InvalidRequest("invalid tool call arguments", param=f"{at}.function.arguments")


def _tools(body: Mapping[str, Any]) -> list[Any] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise InvalidRequest(f"'tools[{i}]' must be an object.", param=f"tools[{i}]")
    conform(tools, list[Tool], "tools")  # passed to Ollama as they are
    # Ollama has no tool_choice; "none" can still be honoured by not offering tools.
    if body.get("tool_choice") == "none":
        return None
    return tools


def _response_format(value: object) -> str | Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequest("'response_format' must be an object.", param="response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind != "json_schema":
        raise InvalidRequest(
            "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
            param="response_format.type",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise InvalidRequest(
            "'response_format.json_schema' must be an object.",
            param="response_format.json_schema",
        )
    schema = spec.get("schema")
    if schema is None:
        return "json"  # a schema-less json_schema still asks for JSON
    if not isinstance(schema, Mapping):
        raise InvalidRequest(
            "'response_format.json_schema.schema' must be an object.",
            param="response_format.json_schema.schema",
        )
    return schema


def _reasoning(body: Mapping[str, Any]) -> bool | str | None:
    # Both spellings are checked, even when the nested one wins.
    think = _effort(body.get("reasoning_effort"), "reasoning_effort")
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, Mapping):
            raise InvalidRequest("'reasoning' must be an object.", param="reasoning")
        nested = _effort(reasoning.get("effort"), "reasoning.effort")
        if nested is not None:
            think = nested
    return think


def _effort(effort: object, param: str) -> bool | str | None:
    if effort is None:
        return None
    think = _EFFORT.get(effort) if isinstance(effort, str) else None
    if think is None:
        raise InvalidRequest(f"'{param}' must be one of {', '.join(_EFFORT)}.", param=param)
    return think


# --------------------------------------------------------------------------- other requests


def completion_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """Translate a ``/v1/completions`` body into an ``/api/generate`` body.

    ``prompt`` must be a string (an array holding exactly one string is accepted);
    token arrays and batches of several prompts are refused with a 400 rather than
    silently answering only the first. ``suffix`` is forwarded (Ollama fills in the
    middle for models that support it). ``echo: true`` is refused with a 400: Ollama
    cannot return the prompt with the completion and quietly dropping it would change
    the text clients receive. Options map as in :func:`chat_request`
    (``max_tokens``, ``temperature``, ``top_p``, penalties, ``seed``, ``stop``);
    ``n``, ``best_of``, ``logprobs``, ``logit_bias`` and ``user`` are dropped. Ollama's
    ``options``, ``keep_alive``, ``format``, ``think`` and ``images`` pass through.
    """
    body = _body(body)
    native: dict[str, Any] = {
        "model": _model(body),
        "prompt": _prompt(body.get("prompt")),
        "stream": _stream(body),
    }
    include_usage(body)
    suffix = body.get("suffix")
    if suffix is not None:
        if not isinstance(suffix, str):
            raise InvalidRequest("'suffix' must be a string.", param="suffix")
        if suffix:
            native["suffix"] = suffix
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise InvalidRequest("'echo' must be a boolean.", param="echo")
    if echo:
        raise InvalidRequest("'echo' is not supported by this server.", param="echo")
    _passthrough(
        body,
        native,
        _sampling_options(body, chat=False),
        ("keep_alive", "format", "think", "images"),
    )
    return native


def _prompt(value: object) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(_is_int(v) or isinstance(v, list) for v in value):
        raise InvalidRequest(
            "Token-id arrays are not supported as 'prompt'; send the text.", param="prompt"
        )
    raise InvalidRequest("'prompt' must be a string (one prompt per request).", param="prompt")


def embeddings_request(body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Translate a ``/v1/embeddings`` body; return the ``/api/embed`` body and the format.

    ``input`` becomes a list of strings (``""`` → ``[""]`` so a vector comes back);
    ``[]``, more than 2048 items and anything but strings are a 400, token-id arrays with
    a message that tells LangChain users to set ``check_embedding_ctx_length=False``.
    The format is ``"float"`` (default) or ``"base64"``, matched case-insensitively
    (the ``openai`` SDK asks for base64 unless told otherwise). ``dimensions`` (≥ 1)
    is forwarded; Ollama's ``options``, ``keep_alive`` and ``truncate`` pass through;
    ``user`` is dropped.
    """
    body = _body(body)
    native: dict[str, Any] = {"model": _model(body), "input": _embed_input(body.get("input"))}
    fmt = body.get("encoding_format")
    if fmt is None:
        encoding = "float"
    elif isinstance(fmt, str) and fmt.lower() in ("float", "base64"):
        encoding = fmt.lower()
    else:
        raise InvalidRequest(
            "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    dimensions = _positive_int(body, "dimensions")
    if dimensions is not None:
        native["dimensions"] = dimensions
    _passthrough(body, native, {}, ("keep_alive", "truncate"))
    return native, encoding


def _embed_input(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if not value:
            raise InvalidRequest("'input' must not be empty.", param="input")
        if all(isinstance(item, str) for item in value):
            if len(value) > _MAX_EMBED_INPUTS:
                raise InvalidRequest(
                    f"'input' may hold at most {_MAX_EMBED_INPUTS} items.", param="input"
                )
            return value
        if all(_is_int(item) or isinstance(item, list) for item in value):
            raise InvalidRequest(_ID_ARRAYS_REFUSED, param="input")
    raise InvalidRequest("'input' must be a string or an array of strings.", param="input")


# --------------------------------------------------------------------------- admission


def requested_completion_cap(native_body: Mapping[str, Any]) -> int | None:
    """The completion cap a native body asks for (``options.num_predict``), if any.

    None when absent or not a positive whole number: Ollama reads ``num_predict`` ≤ 0
    as "unbounded" (-1 infinite, -2 fill the context), so those request no cap and the
    caller applies its default. Works on bodies of every upstream endpoint and on the
    bodies :func:`chat_request` / :func:`completion_request` build.
    """
    options = native_body.get("options")
    if not isinstance(options, Mapping):
        return None
    value = options.get("num_predict")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    return None


def apply_completion_cap(native_body: dict[str, Any], cap: int) -> None:
    """Set ``options.num_predict`` to ``cap`` in place, creating ``options`` if needed.

    Raises :class:`ValueError` for ``cap`` < 1 (Ollama would read it as "no limit",
    defeating the reservation) and :class:`InvalidRequest` (param ``options``) when
    the body's ``options`` is not an object.
    """
    if cap < 1:
        raise ValueError(f"completion cap must be positive, got {cap}")
    options = native_body.get("options")
    if options is None:
        native_body["options"] = {"num_predict": cap}
    elif isinstance(options, dict):
        options["num_predict"] = cap
    else:
        raise InvalidRequest("'options' must be an object.", param="options")


def _text_len(value: object) -> int:
    if not isinstance(value, str):
        return 0
    # isascii() is O(1) on CPython's compact strings; only non-ASCII text is encoded.
    return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))


def prompt_text_bytes(native_body: Mapping[str, Any]) -> tuple[int, int, int]:
    """(UTF-8 bytes of prompt text, number of messages, number of images) of a native body.

    Text counted: message ``content`` and ``thinking`` and their tool calls (as JSON),
    ``system``, ``prompt``, ``suffix``, embedding ``input`` (string or list), and the
    tool definitions as JSON. Works on ``/api/chat``, ``/api/generate``, ``/api/embed``
    and ``/api/embeddings`` bodies; values of the wrong type count as nothing (Ollama
    refuses them anyway). The basis for a conservative token estimate elsewhere.
    """
    size = 0
    n_messages = 0
    n_images = 0
    messages = native_body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            n_messages += 1
            size += _text_len(message.get("content")) + _text_len(message.get("thinking"))
            calls = message.get("tool_calls")
            if calls:
                size += len(_encode(calls))
            images = message.get("images")
            if isinstance(images, list):
                n_images += len(images)
    for key in ("system", "prompt", "suffix"):
        size += _text_len(native_body.get(key))
    items = native_body.get("input")
    if isinstance(items, list):
        size += sum(_text_len(item) for item in items)
    else:
        size += _text_len(items)
    tools = native_body.get("tools")
    if tools:
        size += len(_encode(tools))
    images = native_body.get("images")
    if isinstance(images, list):
        n_images += len(images)
    return size, n_messages, n_images


# --------------------------------------------------------------------------- responses


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chat_finish(done_reason: object, has_tool_calls: bool) -> str:
    if done_reason == "length":
        return "length"
    return "tool_calls" if has_tool_calls else "stop"


def _text_finish(done_reason: object) -> str:
    return "length" if done_reason == "length" else "stop"


def _arguments_json(arguments: object) -> str:
    """Native (object) arguments as OpenAI's JSON string."""
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        return arguments  # already a string: do not double-encode
    return _encode(arguments).decode()


def _response_tool_calls(
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
                "arguments": _arguments_json(function.get("arguments")),
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
        _response_tool_calls(calls, _call_id_base(completion_id), 0, with_index=False)
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
                "finish_reason": _chat_finish(native.get("done_reason"), bool(tool_calls)),
            }
        ],
        "usage": _usage(_count(native.get("prompt_eval_count")), _count(native.get("eval_count"))),
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
                "finish_reason": _text_finish(native.get("done_reason")),
            }
        ],
        "usage": _usage(_count(native.get("prompt_eval_count")), _count(native.get("eval_count"))),
    }


# --------------------------------------------------------------------------- streams


class _Message(msgspec.Struct):
    content: str = ""
    thinking: str = ""
    tool_calls: list[Any] | None = None


class _Frame(msgspec.Struct):
    """The fields of a native stream line we read; the rest is skipped while decoding."""

    message: _Message | None = None
    response: str = ""
    thinking: str = ""
    done: bool = False
    done_reason: str = ""
    prompt_eval_count: int = 0
    eval_count: int = 0
    error: str | None = None


_decode_frame = msgspec.json.Decoder(_Frame).decode
_BAD_FRAME: Final = "The model backend sent an invalid stream frame."


def _error_event(message: str) -> bytes:
    return (
        b'data: {"error":{"message":'
        + _encode(message)
        + b',"type":"server_error","param":null,"code":null}}\n\n'
    )


def _chunk_head(object_name: bytes, completion_id: str, created: int, model: str) -> bytes:
    """Everything of a chunk up to the value of ``choices``; the same on every chunk."""
    return b"".join(
        (
            b'data: {"id":',
            _encode(completion_id),
            b',"object":"',
            object_name,
            b'","created":',
            _encode(created),
            b',"model":',
            _encode(model),
            b',"system_fingerprint":"fp_ollama","choices":',
        )
    )


class _SseStream:
    """Shared state of the two SSE translators: counters, usage chunk, error event."""

    __slots__ = (
        "_close",
        "_head",
        "_include_usage",
        "_usage_null",
        "completion_tokens",
        "content_frames",
        "done",
        "error_message",
        "prompt_tokens",
    )

    def __init__(self, head: bytes, include_usage: bool) -> None:
        self._head = head
        self._include_usage = include_usage
        # With include_usage OpenAI puts "usage": null on every other chunk; without it,
        # no usage key at all (and the SDK only reads it on the last chunk).
        self._usage_null = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._close = b',"logprobs":null,"finish_reason":null}]' + self._usage_null
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.content_frames = 0
        self.done = False
        self.error_message: str | None = None

    @property
    def finished(self) -> bool:
        """No more output will be produced (final frame or error seen)."""
        return self.done or self.error_message is not None

    def error(self, message: str) -> bytes:
        """One mid-stream error event in OpenAI's shape; the stream is over after it.

        No ``[DONE]`` follows: the SDK raises ``APIError`` on the event anyway, and a
        stream without its terminator tells any other reader it was cut short. Returns
        ``b""`` once the stream has finished (after the final frame or a first error).
        """
        if self.finished:
            return b""
        self.error_message = message
        return _error_event(message)

    def _finish(self, finish_chunk: bytes) -> bytes:
        parts = [finish_chunk]
        if self._include_usage:
            usage = _usage(self.prompt_tokens, self.completion_tokens)
            parts.append(self._head + b'[],"usage":' + _encode(usage) + b"}\n\n")
        parts.append(SSE_DONE)
        return b"".join(parts)


class ChatStream(_SseStream):
    """Translates a streamed ``/api/chat`` answer into ``chat.completion.chunk`` SSE bytes.

    Feed each native frame (:meth:`feed` for a decoded dict, :meth:`feed_line` for the
    raw NDJSON line, which decodes only the fields needed); each call returns the bytes
    to send, possibly ``b""``. The first chunk carries ``delta.role``; content goes to
    ``delta.content``, thinking to ``delta.reasoning`` (Ollama's non-standard name),
    tool calls to ``delta.tool_calls`` (whole calls, each with a stream-wide ``index``,
    an ``id``, ``type`` and JSON-string ``arguments``). The final frame adds a finish
    chunk with an empty delta, then with ``include_usage`` a ``choices: []`` usage
    chunk, then ``data: [DONE]``. A native ``{"error": …}`` frame, or a line that does
    not decode, becomes :meth:`error`'s event.

    Counters for accounting: ``prompt_tokens`` and ``completion_tokens`` (from the final
    frame), ``content_frames`` (frames that carried content, thinking or tool calls: the
    fallback count when the final frame never comes), ``done`` and ``error_message``.
    """

    __slots__ = ("_id_base", "_open", "_role_sent", "_tool_calls")

    def __init__(
        self, *, model: str, completion_id: str, created: int, include_usage: bool
    ) -> None:
        head = _chunk_head(b"chat.completion.chunk", completion_id, created, model)
        super().__init__(head, include_usage)
        self._open = head + b'[{"index":0,"delta":'
        self._id_base = _call_id_base(completion_id)
        self._role_sent = False
        self._tool_calls = 0

    def feed(self, frame: Mapping[str, Any]) -> bytes:
        """SSE bytes for one decoded native frame."""
        if self.finished:
            return b""
        error = frame.get("error")
        if error is not None:
            return self.error(error if isinstance(error, str) else _BAD_FRAME)
        message = frame.get("message")
        content = thinking = ""
        calls = None
        if isinstance(message, Mapping):
            value = message.get("content")
            content = value if isinstance(value, str) else ""
            value = message.get("thinking")
            thinking = value if isinstance(value, str) else ""
            value = message.get("tool_calls")
            calls = value if isinstance(value, list) else None
        return self._step(
            content,
            thinking,
            calls,
            frame.get("done") is True,
            frame.get("done_reason"),
            _count(frame.get("prompt_eval_count")),
            _count(frame.get("eval_count")),
        )

    def feed_line(self, line: bytes) -> bytes:
        """SSE bytes for one raw native NDJSON line."""
        if self.finished:
            return b""
        try:
            frame = _decode_frame(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self.error(_BAD_FRAME)
        if frame.error is not None:
            return self.error(frame.error)
        message = frame.message or _Message()
        return self._step(
            message.content,
            message.thinking,
            message.tool_calls,
            frame.done,
            frame.done_reason,
            _count(frame.prompt_eval_count),
            _count(frame.eval_count),
        )

    def _step(
        self,
        content: str,
        thinking: str,
        calls: list[Any] | None,
        done: bool,
        done_reason: object,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> bytes:
        out = b""
        if content or thinking or calls:
            self.content_frames += 1
            delta: dict[str, Any] = {}
            if not self._role_sent:
                delta["role"] = "assistant"
                self._role_sent = True
            if content:
                delta["content"] = content
            if thinking:
                delta["reasoning"] = thinking
            if calls:
                items = _response_tool_calls(
                    calls, self._id_base, self._tool_calls, with_index=True
                )
                self._tool_calls += len(items)
                if items:
                    delta["tool_calls"] = items
            out = self._open + _encode(delta) + self._close
        if not done:
            return out
        self.done = True
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        if not self._role_sent:
            # OpenAI always opens with the role; keep that even for an empty answer.
            self._role_sent = True
            out += self._open + b'{"role":"assistant","content":""}' + self._close
        finish = _chat_finish(done_reason, self._tool_calls > 0)
        return out + self._finish(
            self._open
            + b'{},"logprobs":null,"finish_reason":"'
            + finish.encode()
            + b'"}]'
            + self._usage_null
        )


class CompletionStream(_SseStream):
    """Translates a streamed ``/api/generate`` answer into ``text_completion`` SSE bytes.

    Like :class:`ChatStream`: each text frame becomes a chunk with ``choices[0].text``;
    the final frame's chunk (its own text, usually empty) carries ``finish_reason``,
    followed by the usage chunk when asked and ``data: [DONE]``. Thinking has no place in
    a completion, so it is not sent, but frames carrying it count as content frames
    (those tokens are generated and billed).
    """

    __slots__ = ("_open",)

    def __init__(
        self, *, model: str, completion_id: str, created: int, include_usage: bool
    ) -> None:
        head = _chunk_head(b"text_completion", completion_id, created, model)
        super().__init__(head, include_usage)
        self._open = head + b'[{"text":'
        self._close = b',"index":0,"logprobs":null,"finish_reason":null}]' + self._usage_null

    def feed(self, frame: Mapping[str, Any]) -> bytes:
        """SSE bytes for one decoded native frame."""
        if self.finished:
            return b""
        error = frame.get("error")
        if error is not None:
            return self.error(error if isinstance(error, str) else _BAD_FRAME)
        text = frame.get("response")
        thinking = frame.get("thinking")
        return self._step(
            text if isinstance(text, str) else "",
            isinstance(thinking, str) and bool(thinking),
            frame.get("done") is True,
            frame.get("done_reason"),
            _count(frame.get("prompt_eval_count")),
            _count(frame.get("eval_count")),
        )

    def feed_line(self, line: bytes) -> bytes:
        """SSE bytes for one raw native NDJSON line."""
        if self.finished:
            return b""
        try:
            frame = _decode_frame(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self.error(_BAD_FRAME)
        if frame.error is not None:
            return self.error(frame.error)
        return self._step(
            frame.response,
            bool(frame.thinking),
            frame.done,
            frame.done_reason,
            _count(frame.prompt_eval_count),
            _count(frame.eval_count),
        )

    def _step(
        self,
        text: str,
        thinking: bool,
        done: bool,
        done_reason: object,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> bytes:
        if text or thinking:
            self.content_frames += 1
        if not done:
            return self._open + _encode(text) + self._close if text else b""
        self.done = True
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        return self._finish(
            self._open
            + _encode(text)
            + b',"index":0,"logprobs":null,"finish_reason":"'
            + _text_finish(done_reason).encode()
            + b'"}]'
            + self._usage_null
        )


class NativeStreamTap:
    """Watches a native NDJSON stream that is forwarded byte for byte (never re-encoded).

    Feed each complete line (or a whole non-streamed JSON body): the tap decodes only
    the fields it needs and tracks ``prompt_tokens``/``completion_tokens`` (the final
    frame's ``prompt_eval_count``/``eval_count``), ``content_frames`` (frames with
    content, thinking or tool calls, for chat and generate alike), ``done`` and
    ``error_message`` (an ``{"error": …}`` line). It never raises on upstream garbage;
    lines it cannot read are counted in ``invalid_lines``.
    """

    __slots__ = (
        "completion_tokens",
        "content_frames",
        "done",
        "error_message",
        "invalid_lines",
        "prompt_tokens",
    )

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.content_frames = 0
        self.done = False
        self.error_message: str | None = None
        self.invalid_lines = 0

    def feed(self, line: bytes) -> None:
        """Account for one native line."""
        try:
            frame = _decode_frame(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.invalid_lines += 1
            return
        if frame.error is not None:
            self.error_message = frame.error
            return
        message = frame.message
        if (
            frame.response
            or frame.thinking
            or (message and (message.content or message.thinking or message.tool_calls))
        ):
            self.content_frames += 1
        if frame.done:
            self.done = True
            self.prompt_tokens = _count(frame.prompt_eval_count)
            self.completion_tokens = _count(frame.eval_count)


def native_error_line(message: str) -> bytes:
    """An Ollama-shaped error line for an NDJSON stream: ``{"error":"…"}\\n``."""
    return b'{"error":' + _encode(message) + b"}\n"


# --------------------------------------------------------------------------- embeddings, models


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
    tokens = _count(native.get("prompt_eval_count"))
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
