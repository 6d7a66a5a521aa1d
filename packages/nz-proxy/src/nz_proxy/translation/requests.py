"""OpenAI requests as Ollama requests: ``/v1`` bodies in, native bodies out.

A body is first checked against its type in :mod:`nz_proxy.wire.openai` (the one
statement of what a request may hold, which the OpenAPI document shows too), then
translated from the typed value. Ollama's own fields a client may send alongside
(``options``, ``keep_alive``, ``format``, ``think``, ``tools``, ``images``,
``truncate``) pass through as sent, checked against the same types as on ``/api``.
Every problem is an :class:`~nz_proxy.errors.InvalidRequest` whose ``param`` names the
field; a few refusals explain themselves better than a type can (token-id arrays,
image URLs, unparseable tool arguments).

Where WIRE.md leaves a choice, the decision is documented on the function concerned.
The main ones: unlike Ollama's own layer we never default ``temperature``/``top_p``,
we read ``max_completion_tokens``, and ``tool_choice: "none"`` withholds the tools.
``n`` and a batch of prompts are not Ollama's to see: the translated body is one call,
and :mod:`nz_proxy.fanout` makes as many as the request asks (:func:`choice_count`,
:func:`batch_prompts`).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import msgspec

from nz_proxy.errors import InvalidRequest
from nz_proxy.wire import conform_value
from nz_proxy.wire.openai import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    Content,
    EmbeddingsRequest,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    RefusalPart,
    StreamOptions,
    TextPart,
    ToolCall,
    ToolMessage,
)

__all__ = [
    "batch_prompts",
    "chat_request",
    "choice_count",
    "completion_request",
    "embeddings_request",
    "include_usage",
]

T = TypeVar("T")
_decode: Final = msgspec.json.decode

_ROLES: Final = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
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
# What Ollama's image decoder takes; ``data:;base64,`` is its "type unknown".
_IMAGE_PREFIX: Final = re.compile(r"data:(?:image/(?:png|jpeg|jpg|webp))?;base64,")
_ID_ARRAYS_REFUSED: Final = (
    "Token-id arrays are not supported as 'input'; send the text itself. LangChain's "
    "OpenAIEmbeddings sends token arrays by default: set check_embedding_ctx_length=False."
)
_MAX_EMBED_INPUTS: Final = 2048


# -- typed reading, with the refusals that explain themselves -----------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(_is_int(v) or isinstance(v, list) for v in value)
    )


def _explain_input(value: object) -> str | None:
    if isinstance(value, list) and not value:
        return "'input' must not be empty."
    if _token_ids(value):
        return _ID_ARRAYS_REFUSED
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return f"'input' may hold at most {_MAX_EMBED_INPUTS} items."
    return "'input' must be a string or an array of strings."


def _explain_prompt(value: object) -> str | None:
    if _token_ids(value):
        return "Token-id arrays are not supported as 'prompt'; send the text."
    if isinstance(value, list) and not value:
        return "'prompt' must be a string or a non-empty array of strings."
    return None


_RANGES: Final = {
    "n": "'n' must be a whole number from 1 to 128.",
    "top_logprobs": "'top_logprobs' must be an integer from 0 to 20.",
}


def _explain_image(value: object) -> str:
    url = value.get("url") if isinstance(value, Mapping) else value
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return (
            "Image URLs are not supported; send the image inline as a "
            "'data:image/png;base64,...' URI (png, jpeg or webp)."
        )
    if isinstance(url, str) and _IMAGE_PREFIX.match(url):
        return "The image is not valid base64 data."
    return "Unsupported image; send a 'data:image/png;base64,...' URI (png, jpeg or webp)."


_IMAGE_PARAM: Final = re.compile(r"messages\[\d+\]\.content\[\d+\]\.image_url(?:\.url)?")
_ARGUMENTS_PARAM: Final = re.compile(r"messages\[\d+\]\.tool_calls\[\d+\]\.function\.arguments")


def _explained(error: InvalidRequest, body: Mapping[str, Any]) -> InvalidRequest:
    """The type's refusal, or a clearer one for the fields clients most often get wrong."""
    param = error.param or ""
    message: str | None = None
    if param.startswith("input"):
        message, param = _explain_input(body.get("input")), "input"
    elif param.startswith("prompt"):
        message = _explain_prompt(body.get("prompt"))
        param = "prompt" if message else param
    elif param == "echo" and body.get("echo") is True:
        message = "'echo' is not supported by this server."
    elif param == "encoding_format":
        message = "'encoding_format' must be 'float' or 'base64'."
    elif param in _RANGES:
        message = _RANGES[param]
    elif _IMAGE_PARAM.fullmatch(param):
        param = param.removesuffix(".url")
        message = _explain_image(_dig(body, param))
    elif _ARGUMENTS_PARAM.fullmatch(param):
        message = "invalid tool call arguments"
    if message is None:
        return error
    return InvalidRequest(message, param=param)


def _dig(body: Mapping[str, Any], param: str) -> Any:
    value: Any = body
    for name, index in re.findall(r"(\w+)|\[(\d+)\]", param):
        try:
            value = value[name] if name else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _typed(body: object, schema: type[T]) -> tuple[T, Mapping[str, Any]]:
    """The body as its type, and as the mapping it came as (for what passes through)."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        typed: T = conform_value(body, schema)
        return typed, body
    except InvalidRequest as error:
        raise _explained(error, body) from None


# -- fields shared by the three endpoints ---------------------------------------------------


def include_usage(body: Mapping[str, Any]) -> bool:
    """``stream_options.include_usage`` of an OpenAI body (false when absent)."""
    options: StreamOptions | None = conform_value(
        body.get("stream_options"), StreamOptions | None, "stream_options"
    )
    return bool(options and options.include_usage)


def choice_count(body: Mapping[str, Any]) -> int:
    """``n`` of a body :func:`chat_request` or :func:`completion_request` accepted: how
    many choices to generate for each prompt (1 when absent)."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def batch_prompts(body: Mapping[str, Any]) -> list[str]:
    """The prompts of a ``/v1/completions`` body :func:`completion_request` accepted, in
    order: one, or a batch (each answered by its own choices)."""
    prompt = body["prompt"]
    return [prompt] if isinstance(prompt, str) else list(prompt)


def _sampling_options(request: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """The OpenAI sampling fields as Ollama ``options`` (only those the client gave)."""
    options: dict[str, Any] = {}
    cap = request.max_tokens
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        cap = request.max_completion_tokens  # the newer name wins; Ollama's layer ignores it
    if cap is not None:
        options["num_predict"] = cap
    # temperature and top_p only when given: defaulting them (as Ollama's layer does, to
    # 1.0) would override the Modelfile's tuned values.
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
        value = getattr(request, name)
        if value is not None:
            options[name] = value
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    if stop:
        options["stop"] = stop
    return options


def _passthrough(
    body: Mapping[str, Any], native: dict[str, Any], mapped: dict[str, Any], names: tuple[str, ...]
) -> None:
    """Ollama's own fields the client sent, as sent (checked already), with ``options``
    merged: the fields mapped from OpenAI names override the same keys."""
    client_options = body.get("options")
    if client_options or mapped:
        native["options"] = {**(client_options or {}), **mapped}
    for name in names:
        value = body.get(name)
        if value is not None:
            native[name] = value


# -- chat -----------------------------------------------------------------------------------


def chat_request(body: object) -> dict[str, Any]:
    """Translate a ``/v1/chat/completions`` body into an ``/api/chat`` body.

    The native body always carries an explicit ``stream`` boolean (OpenAI's default is
    false, Ollama's true). Mapped: ``messages`` (below), ``tools``,
    ``max_completion_tokens`` (preferred) or ``max_tokens`` → ``options.num_predict``,
    ``temperature``, ``top_p``, ``frequency_penalty``, ``presence_penalty``, ``seed``,
    ``stop`` → ``options``; ``response_format`` → ``format``; ``reasoning_effort`` (or
    ``reasoning.effort``) → ``think``; ``logprobs`` and ``top_logprobs`` (0-20; more
    than 0 needs ``logprobs: true``, as OpenAI says) as Ollama's fields of those names.
    Ollama's own ``options``, ``keep_alive``, ``format`` and ``think`` pass through;
    mapped values win on conflict. ``n`` is not Ollama's (see :func:`choice_count`).
    Everything else (``user``, ``logit_bias``, ``parallel_tool_calls``, …) is dropped;
    ``tool_choice: "none"`` drops ``tools`` so the model cannot call one.

    Messages: ``developer`` becomes ``system``. Content may be a string, null or an
    array of parts; as in Ollama's layer each ``text`` part and each image becomes its
    own native message with the same role (images as base64 payloads in ``images``).
    Assistant ``tool_calls[].function.arguments`` (a JSON string) become objects; tool
    calls and ``reasoning`` (→ ``thinking``) sit on the last native message of their
    group. Each native message of a tool result carries ``tool_call_id`` and
    ``tool_name``: the message's ``name``, else the function name of the latest earlier
    assistant tool call with that id (none if there is no such call).
    """
    request, body = _typed(body, ChatCompletionRequest)
    native: dict[str, Any] = {
        "model": request.model,
        "messages": _chat_messages(request.messages),
        "stream": bool(request.stream),
    }
    # Ollama has no tool_choice; "none" can still be honoured by not offering tools.
    if request.tools and request.tool_choice != "none":
        native["tools"] = body["tools"]  # as sent: Ollama's own shape
    _passthrough(body, native, _sampling_options(request), ("keep_alive", "format", "think"))
    fmt = request.response_format
    if isinstance(fmt, JsonObjectFormat):
        native["format"] = "json"
    elif isinstance(fmt, JsonSchemaFormat):
        # A schema-less json_schema still asks for JSON.
        native["format"] = fmt.json_schema.schema if fmt.json_schema.schema is not None else "json"
    effort = request.reasoning.effort if request.reasoning else None
    effort = effort if effort is not None else request.reasoning_effort
    if effort is not None:
        native["think"] = _EFFORT[effort]
    if request.top_logprobs and not request.logprobs:
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    _ask_logprobs(native, (request.top_logprobs or 0) if request.logprobs else None)
    return native


def _ask_logprobs(native: dict[str, Any], top: int | None) -> None:
    """Ollama's ``logprobs`` and ``top_logprobs`` (``None``: not asked)."""
    if top is None:
        return
    native["logprobs"] = True
    if top:
        native["top_logprobs"] = top


def _chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool call id → function name, latest wins
    for i, message in enumerate(messages):
        role = _ROLES[type(message).__struct_config__.tag]  # type: ignore[index]
        group = _content_messages(role, message.content, f"messages[{i}]")
        if isinstance(message, AssistantMessage):
            if message.tool_calls:
                calls = _request_tool_calls(message.tool_calls, call_names, f"messages[{i}]")
                group[-1]["tool_calls"] = calls
            if isinstance(message.reasoning, str) and message.reasoning:
                group[-1]["thinking"] = message.reasoning
        elif isinstance(message, ToolMessage):
            call_id = message.tool_call_id
            name = message.name if isinstance(message.name, str) and message.name else None
            name = name or (call_names.get(call_id) if call_id else None)
            for native in group:
                if name:
                    native["tool_name"] = name
                if call_id:
                    native["tool_call_id"] = call_id
        out.extend(group)
    return out


def _content_messages(role: str, content: Content, where: str) -> list[dict[str, Any]]:
    """One or more native messages for one OpenAI message's content (never none)."""
    if content is None or isinstance(content, str):
        return [{"role": role, "content": content or ""}]
    group: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            group.append({"role": role, "content": part.text})
        elif isinstance(part, RefusalPart):
            group.append({"role": role, "content": part.refusal})
        elif isinstance(part, ImagePart):
            image = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            payload = _IMAGE_PREFIX.sub("", image, count=1)
            _check_base64(payload, f"{where}.content[{j}].image_url")
            group.append({"role": role, "content": "", "images": [payload]})
    return group or [{"role": role, "content": ""}]


def _check_base64(payload: str, param: str) -> None:
    # The type's pattern checks the alphabet; only decoding proves the padding right.
    try:
        binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("The image is not valid base64 data.", param=param) from None


def _request_tool_calls(
    calls: list[ToolCall], call_names: dict[str, str], where: str
) -> list[dict[str, Any]]:
    native_calls: list[dict[str, Any]] = []
    for k, call in enumerate(calls):
        name = call.function.name
        at = f"{where}.tool_calls[{k}].function.arguments"
        native: dict[str, Any] = {
            "function": {"name": name, "arguments": _arguments(call.function.arguments, at)}
        }
        if isinstance(call.id, str) and call.id:
            native["id"] = call.id
            call_names[call.id] = name
        native_calls.append(native)
    return native_calls


def _arguments(raw: dict[str, Any] | str | None, param: str) -> dict[str, Any]:
    """OpenAI's JSON-string arguments as the object Ollama wants (``""`` means none)."""
    if isinstance(raw, dict):
        return raw  # some clients already send an object
    if not raw:
        return {}
    try:
        parsed = _decode(raw)  # the type's pattern only says it looks like an object
    except (msgspec.DecodeError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidRequest("invalid tool call arguments", param=param)
    return parsed


# -- completions and embeddings ---------------------------------------------------------------


def completion_request(body: object) -> dict[str, Any]:
    """Translate a ``/v1/completions`` body into an ``/api/generate`` body.

    ``prompt`` is a string or a non-empty array of strings; the body carries the first,
    and :func:`batch_prompts` gives them all (each is its own call). Token arrays are
    refused with a 400. ``suffix`` is forwarded (Ollama fills in the middle for models
    that support it). ``echo: true`` is refused: Ollama cannot return the prompt with
    the completion. Options map as in :func:`chat_request`; ``logprobs`` (0-20: the
    alternatives per token) becomes Ollama's ``logprobs: true`` and ``top_logprobs``;
    ``n`` is not Ollama's (see :func:`choice_count`); ``best_of``, ``logit_bias`` and
    ``user`` are dropped. Ollama's ``options``, ``keep_alive``, ``format``, ``think``
    and ``images`` pass through.
    """
    request, body = _typed(body, CompletionRequest)
    prompt = request.prompt if isinstance(request.prompt, str) else request.prompt[0]
    native: dict[str, Any] = {
        "model": request.model,
        "prompt": prompt,
        "stream": bool(request.stream),
    }
    if request.suffix:
        native["suffix"] = request.suffix
    _passthrough(
        body, native, _sampling_options(request), ("keep_alive", "format", "think", "images")
    )
    _ask_logprobs(native, request.logprobs)
    return native


def embeddings_request(body: object) -> tuple[dict[str, Any], str]:
    """Translate a ``/v1/embeddings`` body; return the ``/api/embed`` body and the format.

    ``input`` becomes a list of strings (``""`` → ``[""]`` so a vector comes back);
    ``[]``, more than 2048 items and anything but strings are a 400, token-id arrays with
    a message that tells LangChain users to set ``check_embedding_ctx_length=False``.
    The format is ``"float"`` (default) or ``"base64"``, matched case-insensitively
    (the ``openai`` SDK asks for base64 unless told otherwise). ``dimensions`` (≥ 1)
    is forwarded; Ollama's ``options``, ``keep_alive`` and ``truncate`` pass through;
    ``user`` is dropped.
    """
    request, body = _typed(body, EmbeddingsRequest)
    inputs = [request.input] if isinstance(request.input, str) else request.input
    native: dict[str, Any] = {"model": request.model, "input": inputs}
    if request.dimensions is not None:
        native["dimensions"] = request.dimensions
    _passthrough(body, native, {}, ("keep_alive", "truncate"))
    return native, (request.encoding_format or "float").lower()
