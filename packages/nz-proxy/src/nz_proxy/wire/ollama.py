"""Ollama's native surface's bodies (``/api``), named and typed as Ollama's Go types
(``api/types.go``) bind them: what a request may hold, and what its answers hold."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from nz_proxy.wire.fields import (
    INT64_MAX,
    Base64,
    Format,
    Int64,
    KeepAlive,
    ModelName,
    Options,
    Think,
    Tool,
)


class OllamaFunctionCall(msgspec.Struct):
    name: str | None = None
    arguments: dict[str, Any] | None = None
    index: Int64 | None = None


class OllamaToolCall(msgspec.Struct):
    function: OllamaFunctionCall | None = None
    id: str | None = None


class OllamaMessage(msgspec.Struct):
    role: str | None = None
    content: str | None = None
    thinking: str | None = None
    images: list[Base64] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class OllamaChatRequest(msgspec.Struct):
    """Ollama's chat; forwarded as sent. No messages just loads the model."""

    model: ModelName
    messages: list[OllamaMessage] | None = None
    tools: list[Tool] | None = None
    stream: Annotated[bool | None, msgspec.Meta(description="Default: true (NDJSON).")] = None
    format: Format | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    debug_render_only: bool | None = msgspec.field(default=None, name="_debug_render_only")


class OllamaGenerateRequest(msgspec.Struct):
    """Ollama's generate; forwarded as sent. No prompt just loads the model. With
    `raw: true`, `system`, `template` and `context` must be empty."""

    model: ModelName
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    images: list[Base64] | None = None
    context: list[Int64] | None = None
    raw: bool | None = None
    stream: Annotated[bool | None, msgspec.Meta(description="Default: true (NDJSON).")] = None
    format: Format | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    debug_render_only: bool | None = msgspec.field(default=None, name="_debug_render_only")


class OllamaEmbedRequest(msgspec.Struct):
    """Ollama's embed; forwarded as sent."""

    model: ModelName
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)] | None,
        msgspec.Meta(description="At most the model's own dimension; 0 means all of it."),
    ] = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class OllamaEmbeddingsRequest(msgspec.Struct):
    """Ollama's legacy single embedding; forwarded as sent."""

    model: ModelName
    prompt: str | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class OllamaShowRequest(msgspec.Struct):
    """`model`, or Ollama's older `name` when `model` is empty."""

    model: str | None = None
    name: str | None = None
    verbose: bool | None = None
    system: str | None = None
    template: str | None = None
    options: Options | None = None


# -- answers ------------------------------------------------------------------------------


class OllamaErrorBody(msgspec.Struct):
    """Every refusal on `/api`."""

    error: str


class OllamaReplyMessage(msgspec.Struct):
    role: str
    content: str
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class OllamaChatReply(msgspec.Struct):
    """Ollama's answer as it sent it: the final frame with the whole text (`stream`
    false), or NDJSON frames of this shape."""

    model: str
    created_at: str
    message: OllamaReplyMessage
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class OllamaGenerateReply(msgspec.Struct):
    """Ollama's answer as it sent it, whole or as NDJSON frames of this shape."""

    model: str
    created_at: str
    response: str
    done: bool
    thinking: str | None = None
    done_reason: str | None = None
    context: list[int] | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class OllamaEmbedReply(msgspec.Struct):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class OllamaEmbeddingsReply(msgspec.Struct):
    embedding: list[float]


class OllamaModel(msgspec.Struct):
    name: str
    model: str
    size: int
    digest: str
    details: dict[str, Any]
    modified_at: str | None = None
    expires_at: str | None = None
    size_vram: int | None = None
    context_length: int | None = None


class OllamaModels(msgspec.Struct):
    """Ollama's list, without the models outside the key's set."""

    models: list[OllamaModel]


class OllamaShowReply(msgspec.Struct):
    """Ollama's answer as it sent it."""

    model_info: dict[str, Any]
    license: str | None = None
    modelfile: str | None = None
    parameters: str | None = None
    template: str | None = None
    system: str | None = None
    details: dict[str, Any] | None = None
    capabilities: list[str] | None = None
    modified_at: str | None = None


class OllamaVersion(msgspec.Struct):
    version: str
