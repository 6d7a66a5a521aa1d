"""The API's bodies as msgspec types, and the OpenAPI document Litestar generates from them.

The data-plane routes are raw ASGI handlers (for speed), so Litestar cannot see what they
take or give. The documentation-only handlers at the end of this module stand in for
them, one per operation; they are never served. :func:`openapi_document` builds a
throwaway Litestar app from them and returns its schema (served at ``/openapi.json``):
Litestar lays out the operations, responses and security, and the component schemas
are msgspec's rendering of the same types, the library that also checks them.

The types say exactly what the gateway accepts, in both directions:

- OpenAI bodies (``/v1``) are validated by hand in :mod:`nz_proxy.translate`, which
  names the offending field in its 400; their types here describe that validation.
- Native bodies (``/api``), and the Ollama fields the OpenAI surface passes through
  (``options``, ``keep_alive``, ``format``, ``think``, ``tools``, ``images``,
  ``truncate``), are checked against these very types by :func:`conform` before
  anything is forwarded.

Every optional field also takes ``null`` (read as absent), as Ollama's decoder and the
OpenAI validation do. Unknown fields are allowed everywhere: Ollama ignores them, and the
OpenAI translation drops them. Schemathesis (``tests/e2e/test_schemathesis.py``) holds the
document and the code to each other.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Litestar, get, post
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme, Tag
from litestar.params import FromPath, JSONBody

from nz_proxy.errors import InvalidRequest

__all__ = ["conform", "openapi_document"]

_INT64_MAX: Final = 2**63 - 1


def _whole(pattern: str) -> str:
    # `$` also matches before a final newline in Python's `re` (msgspec) but not in JSON
    # Schema's ECMA-262 dialect; this lookahead means "end of text" in both.
    return rf"^(?:{pattern})(?![\s\S])"


# -- shared field types -----------------------------------------------------------------

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=_INT64_MAX)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1, le=_INT64_MAX)]
ModelName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"\S",
        description="A model name, `[namespace/]model[:tag]` (no tag means `:latest`). "
        "Must be one of the key's models; any other name, installed or not, gets the same 403.",
        examples=["llama3.2", "qwen2.5:7b", "acme/coder:1b"],
    ),
]
# Standard base64 as Ollama's decoder takes it: the alphabet and end padding. (That the
# length is a multiple of 4 is left to the backend: checking it by pattern costs
# seconds on a 16 MiB image.)
Base64 = Annotated[
    str,
    msgspec.Meta(pattern=_whole(r"[A-Za-z0-9+/]*={0,2}"), description="Base64 image data."),
]
# Seconds as text, or Go's time.ParseDuration grammar (both micro signs).
_DECIMAL: Final = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION: Final = rf"[-+]?(?:{_DECIMAL}|(?:{_DECIMAL}(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)"
KeepAlive = Annotated[
    float | Annotated[str, msgspec.Meta(pattern=_whole(_DURATION))],
    msgspec.Meta(
        description="How long the model stays loaded: seconds, or a Go duration such as "
        '`"5m"` or `"1h30m"`. Negative: forever; `0`: unload now.'
    ),
]
Format = Annotated[
    Literal["json", ""] | dict[str, Any],
    msgspec.Meta(description='`"json"`, or a JSON Schema the answer must follow.'),
]
Think = Annotated[
    bool | Literal["low", "medium", "high", "max"],
    msgspec.Meta(description="Thinking on or off, or its effort (thinking models only)."),
]
Effort = Literal["none", "minimal", "low", "medium", "high", "max", "xhigh", "ultra"]
Stop = str | list[str]


class Options(msgspec.Struct):
    """Ollama's model options. Unknown options pass to Ollama unchecked."""

    num_predict: Int64 | None = None
    num_ctx: Int64 | None = None
    num_keep: Int64 | None = None
    num_batch: Int64 | None = None
    num_gpu: Int64 | None = None
    main_gpu: Int64 | None = None
    num_thread: Int64 | None = None
    seed: Int64 | None = None
    top_k: Int64 | None = None
    repeat_last_n: Int64 | None = None
    temperature: float | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    use_mmap: bool | None = None
    stop: list[str] | None = None


class ToolFunction(msgspec.Struct):
    name: str | None = None
    description: str | None = None
    parameters: Annotated[
        dict[str, Any] | None, msgspec.Meta(description="A JSON Schema of the arguments.")
    ] = None


class Tool(msgspec.Struct):
    """A tool the model may call (OpenAI's function-tool shape, which Ollama shares)."""

    type: str | None = None
    function: ToolFunction | None = None


# -- OpenAI requests (/v1) ----------------------------------------------------------------

# What Ollama's image decoder takes: png, jpeg or webp as a data URI (`data:;base64,`
# is its spelling for "type unknown"), with canonical, non-empty base64.
_B64_QUANTA: Final = (
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)"
)
DataImage = Annotated[
    str,
    msgspec.Meta(
        pattern=_whole(r"data:(?:image/(?:png|jpeg|jpg|webp))?;base64," + _B64_QUANTA),
        description="An inline image, `data:image/png;base64,…` (png, jpeg or webp); "
        "http(s) URLs are refused.",
    ),
]


class StreamOptions(msgspec.Struct):
    include_usage: Annotated[
        bool | None, msgspec.Meta(description="End the stream with a usage chunk.")
    ] = None


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class RefusalPart(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


class ImageUrl(msgspec.Struct):
    url: DataImage


class ImagePart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: ImageUrl | DataImage


Content = Annotated[
    str | list[TextPart | RefusalPart | ImagePart] | None,
    msgspec.Meta(
        description="Text, or content parts: each text part and each image becomes its "
        "own Ollama message with the same role."
    ),
]
# Any JSON object as text, or "" for none. Only decoding it tells whether it is JSON;
# the pattern is what a schema can say of that.
ArgumentsText = Annotated[
    str,
    msgspec.Meta(
        pattern=_whole(r"(?:[ \t\n\r]*\{[\s\S]*\}[ \t\n\r]*)?"),
        description='A JSON object as text (`""` means no arguments).',
    ),
]


class FunctionCall(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    arguments: dict[str, Any] | ArgumentsText | None = None


class ToolCall(msgspec.Struct):
    function: FunctionCall
    id: Annotated[Any, msgspec.Meta(description="The call's id, when a string.")] = None


class SystemMessage(msgspec.Struct, tag_field="role", tag="system"):
    content: Content = None


class DeveloperMessage(msgspec.Struct, tag_field="role", tag="developer"):
    """Sent to Ollama as a system message."""

    content: Content = None


class UserMessage(msgspec.Struct, tag_field="role", tag="user"):
    content: Content = None


class AssistantMessage(msgspec.Struct, tag_field="role", tag="assistant"):
    content: Content = None
    tool_calls: list[ToolCall] | None = None
    reasoning: Annotated[
        Any, msgspec.Meta(description="Earlier thinking, when a non-empty string.")
    ] = None


class ToolMessage(msgspec.Struct, tag_field="role", tag="tool"):
    content: Content = None
    tool_call_id: str | None = None
    name: Annotated[
        Any,
        msgspec.Meta(
            description="The tool's name, when a non-empty string; else the name of the "
            "earlier call with this `tool_call_id`."
        ),
    ] = None


ChatMessage = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class TextFormat(msgspec.Struct, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class JsonSchemaSpec(msgspec.Struct):
    schema: Annotated[
        dict[str, Any] | None,
        msgspec.Meta(description="The JSON Schema; without one, any JSON object."),
    ] = None


class JsonSchemaFormat(msgspec.Struct, tag_field="type", tag="json_schema"):
    json_schema: JsonSchemaSpec


class Reasoning(msgspec.Struct):
    effort: Effort | None = None


Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
TopP = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]


class ChatCompletionRequest(msgspec.Struct):
    """An OpenAI chat completion. Fields not listed are accepted and dropped."""

    model: ModelName
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: Annotated[
        PositiveInt | None, msgspec.Meta(description="Wins over `max_tokens`.")
    ] = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    seed: Int64 | None = None
    stop: Stop | None = None
    tools: list[Tool] | None = None
    tool_choice: Annotated[
        Any, msgspec.Meta(description='`"none"` withholds the tools; anything else is ignored.')
    ] = None
    response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None = None
    reasoning_effort: Effort | None = None
    reasoning: Reasoning | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    format: Format | None = None
    think: Think | None = None


class CompletionRequest(msgspec.Struct):
    """A legacy OpenAI completion: one prompt per request."""

    model: ModelName
    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    echo: Annotated[Literal[False] | None, msgspec.Meta(description="`true` is not supported.")] = (
        None
    )
    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    seed: Int64 | None = None
    stop: Stop | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    format: Format | None = None
    think: Think | None = None
    images: list[Base64] | None = None


class EmbeddingsRequest(msgspec.Struct):
    """OpenAI embeddings. Token-id arrays are refused: send the text."""

    model: ModelName
    input: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=2048)]
    encoding_format: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=_whole("[Ff][Ll][Oo][Aa][Tt]|[Bb][Aa][Ss][Ee]64"),
                description="`float` (the default) or `base64`, in any case.",
            ),
        ]
        | None
    ) = None
    dimensions: PositiveInt | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    truncate: bool | None = None


# -- Ollama requests (/api) ---------------------------------------------------------------


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


class OllamaEmbedRequest(msgspec.Struct):
    """Ollama's embed; forwarded as sent."""

    model: ModelName
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)] | None,
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


# -- answers ------------------------------------------------------------------------------


class OpenAIError(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(msgspec.Struct):
    """Every refusal on `/v1` (and on the probes)."""

    error: OpenAIError


class OllamaErrorBody(msgspec.Struct):
    """Every refusal on `/api`."""

    error: str


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCallReply(msgspec.Struct):
    name: str
    arguments: Annotated[str, msgspec.Meta(description="A JSON object as text.")]


class ToolCallReply(msgspec.Struct):
    id: str
    type: Literal["function"]
    function: FunctionCallReply


class AssistantReply(msgspec.Struct):
    role: Literal["assistant"]
    content: Annotated[str | None, msgspec.Meta(description="Null when only tools are called.")]
    refusal: None
    reasoning: str | None = None
    tool_calls: list[ToolCallReply] | None = None


class ChatChoice(msgspec.Struct):
    index: int
    message: AssistantReply
    logprobs: None
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatCompletion(msgspec.Struct):
    """A whole chat completion (`stream` false); streamed, it is server-sent
    `chat.completion.chunk` events ending in `data: [DONE]`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(msgspec.Struct):
    text: str
    index: int
    logprobs: None
    finish_reason: Literal["stop", "length"]


class TextCompletion(msgspec.Struct):
    """A whole legacy completion; streamed, server-sent `text_completion` events."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[TextChoice]
    usage: Usage


class Embedding(msgspec.Struct):
    object: Literal["embedding"]
    index: int
    embedding: Annotated[
        list[float] | str,
        msgspec.Meta(description="Floats, or little-endian float32 as base64."),
    ]


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(msgspec.Struct):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(msgspec.Struct):
    """The key's models; `data` is `[]`, never null."""

    object: Literal["list"]
    data: list[Model]


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


class Health(msgspec.Struct):
    status: Literal["ok"]


class Readiness(msgspec.Struct):
    """Each dependency's state; 503 when one is unreachable."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, Literal["ok", "unreachable", "in-process"]]


# -- checking bodies against the types ------------------------------------------------------

_AT: Final = re.compile(r" - at `\$(.*)`$")
# A pattern's source says little to a client; the document describes the format.
_REGEX: Final = re.compile(r"matching regex '.*'", re.DOTALL)


def conform(value: object, schema: Any, param: str | None = None) -> None:
    """Raise :class:`InvalidRequest` unless ``value`` (decoded JSON) fits ``schema``.

    ``param`` names where ``value`` sits in the body; the error's ``param`` extends it
    with the path msgspec reports (``options`` → ``options.num_ctx``).
    """
    try:
        msgspec.convert(value, schema, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _AT.search(text)
        where = (param or "") + (match.group(1) if match else "")
        if where.startswith("."):
            where = where[1:]
        reason = _REGEX.sub(
            "in the format /openapi.json describes", text[: match.start()] if match else text
        )
        field = f"'{where}'" if where else "The request body"
        message = f"{field} has a wrong type or value: {reason}."
        raise InvalidRequest(message, param=where or None) from None


# -- the document ---------------------------------------------------------------------------

_BEARER: Final[list[dict[str, list[str]]]] = [{"BearerAuth": []}, {"ApiKeyHeader": []}]
_OPENAI: Final = "OpenAI-compatible"
_OLLAMA: Final = "Ollama-native"
_PROBES: Final = "Probes"

_DESCRIPTIONS: Final = {
    400: "Malformed JSON, a missing or invalid field (the backend's own 400s pass on).",
    401: "A missing, malformed, unknown, wrong or revoked key: one identical body.",
    403: "A model outside the key's set (or nonexistent), or a missing scope.",
    408: "The body did not arrive whole within 60 s.",
    413: "The body exceeds `MAX_REQUEST_BYTES`.",
    429: "A rate, token or concurrency limit, or an exhausted budget (`Retry-After`).",
    502: "The backend is unreachable, failing or its circuit is open.",
    503: "The gateway fails closed: its database or state store is unreachable.",
    504: "The backend timed out before its first byte.",
}
_INFERENCE: Final = (400, 401, 403, 408, 413, 429, 502, 503, 504)
_LISTING: Final = (401, 429, 502, 503, 504)


def _errors(body: type[msgspec.Struct], *statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(body, generate_examples=False, description=_DESCRIPTIONS[status])
        for status in statuses
    }


# Never served: each stands in for a raw ASGI route of the same path, for Litestar to
# read the body and answer types from.


@post(
    "/v1/chat/completions",
    status_code=200,
    tags=[_OPENAI],
    operation_id="createChatCompletion",
    summary="Chat completion (scope `chat`)",
    security=_BEARER,
    responses=_errors(OpenAIErrorBody, *_INFERENCE),
)
async def _chat_completions(data: JSONBody[ChatCompletionRequest]) -> ChatCompletion:
    raise NotImplementedError


@post(
    "/v1/completions",
    status_code=200,
    tags=[_OPENAI],
    operation_id="createCompletion",
    summary="Legacy completion (scope `chat`)",
    security=_BEARER,
    responses=_errors(OpenAIErrorBody, *_INFERENCE),
)
async def _completions(data: JSONBody[CompletionRequest]) -> TextCompletion:
    raise NotImplementedError


@post(
    "/v1/embeddings",
    status_code=200,
    tags=[_OPENAI],
    operation_id="createEmbeddings",
    summary="Embeddings (scope `embeddings`)",
    security=_BEARER,
    responses=_errors(OpenAIErrorBody, *_INFERENCE),
)
async def _embeddings(data: JSONBody[EmbeddingsRequest]) -> EmbeddingList:
    raise NotImplementedError


@get(
    "/v1/models",
    tags=[_OPENAI],
    operation_id="listModels",
    summary="The key's models",
    security=_BEARER,
    responses=_errors(OpenAIErrorBody, *_LISTING),
)
async def _models() -> ModelList:
    raise NotImplementedError


@get(
    "/v1/models/{model:str}",
    tags=[_OPENAI],
    operation_id="retrieveModel",
    summary="One of the key's models",
    description="The model id may contain `/`, sent as is or as `%2F`.",
    security=_BEARER,
    responses=_errors(OpenAIErrorBody, 403, *_LISTING),
)
async def _model(model: FromPath[str]) -> Model:
    raise NotImplementedError


@post(
    "/api/chat",
    status_code=200,
    tags=[_OLLAMA],
    operation_id="ollamaChat",
    summary="Chat (scope `chat`)",
    security=_BEARER,
    responses=_errors(OllamaErrorBody, *_INFERENCE),
)
async def _ollama_chat(data: JSONBody[OllamaChatRequest]) -> OllamaChatReply:
    raise NotImplementedError


@post(
    "/api/generate",
    status_code=200,
    tags=[_OLLAMA],
    operation_id="ollamaGenerate",
    summary="Generate (scope `chat`)",
    security=_BEARER,
    responses=_errors(OllamaErrorBody, *_INFERENCE),
)
async def _ollama_generate(data: JSONBody[OllamaGenerateRequest]) -> OllamaGenerateReply:
    raise NotImplementedError


@post(
    "/api/embed",
    status_code=200,
    tags=[_OLLAMA],
    operation_id="ollamaEmbed",
    summary="Embeddings (scope `embeddings`)",
    security=_BEARER,
    responses=_errors(OllamaErrorBody, *_INFERENCE),
)
async def _ollama_embed(data: JSONBody[OllamaEmbedRequest]) -> OllamaEmbedReply:
    raise NotImplementedError


@post(
    "/api/embeddings",
    status_code=200,
    tags=[_OLLAMA],
    operation_id="ollamaEmbeddings",
    summary="Legacy single embedding (scope `embeddings`)",
    description="The answer carries no token count: the prompt is charged at its estimate.",
    security=_BEARER,
    responses=_errors(OllamaErrorBody, *_INFERENCE),
)
async def _ollama_embeddings(data: JSONBody[OllamaEmbeddingsRequest]) -> OllamaEmbeddingsReply:
    raise NotImplementedError


@get(
    "/api/tags",
    tags=[_OLLAMA],
    operation_id="ollamaTags",
    summary="The key's installed models",
    security=_BEARER,
    responses=_errors(OllamaErrorBody, *_LISTING),
)
async def _ollama_tags() -> OllamaModels:
    raise NotImplementedError


@get(
    "/api/ps",
    tags=[_OLLAMA],
    operation_id="ollamaPs",
    summary="The key's models loaded in memory",
    security=_BEARER,
    responses=_errors(OllamaErrorBody, *_LISTING),
)
async def _ollama_ps() -> OllamaModels:
    raise NotImplementedError


@post(
    "/api/show",
    status_code=200,
    tags=[_OLLAMA],
    operation_id="ollamaShow",
    summary="A model's details",
    security=_BEARER,
    responses=_errors(OllamaErrorBody, 400, 403, 408, 413, *_LISTING),
)
async def _ollama_show(data: JSONBody[OllamaShowRequest]) -> OllamaShowReply:
    raise NotImplementedError


@get(
    "/api/version",
    tags=[_OLLAMA],
    operation_id="ollamaVersion",
    summary="The backend's version",
    security=_BEARER,
    responses=_errors(OllamaErrorBody, *_LISTING),
)
async def _ollama_version() -> OllamaVersion:
    raise NotImplementedError


@get("/healthz", tags=[_PROBES], operation_id="healthz", summary="Liveness")
async def _healthz() -> Health:
    raise NotImplementedError


@get(
    "/readyz",
    tags=[_PROBES],
    operation_id="readyz",
    summary="Readiness",
    responses={
        503: ResponseSpec(
            Readiness, generate_examples=False, description="A dependency is unreachable."
        )
    },
)
async def _readyz() -> Readiness:
    raise NotImplementedError


_REF: Final = "#/components/schemas/{name}"
# Every body an operation takes or gives, by name in the document.
_BODIES: Final = (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
    OllamaChatRequest,
    OllamaGenerateRequest,
    OllamaEmbedRequest,
    OllamaEmbeddingsRequest,
    OllamaShowRequest,
    OpenAIErrorBody,
    OllamaErrorBody,
    ChatCompletion,
    TextCompletion,
    EmbeddingList,
    Model,
    ModelList,
    OllamaChatReply,
    OllamaGenerateReply,
    OllamaEmbedReply,
    OllamaEmbeddingsReply,
    OllamaModels,
    OllamaShowReply,
    OllamaVersion,
    Health,
    Readiness,
)

_HANDLERS: Final = [
    _chat_completions,
    _completions,
    _embeddings,
    _models,
    _model,
    _ollama_chat,
    _ollama_generate,
    _ollama_embed,
    _ollama_embeddings,
    _ollama_tags,
    _ollama_ps,
    _ollama_show,
    _ollama_version,
    _healthz,
    _readyz,
]

# Streams, besides the whole JSON answer. An SSE event is described as schemathesis and
# OpenAPI 3.1 read it, `{data, event, id, retry}`; an NDJSON line as one frame.
_SSE_EVENT: Final = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}},
    "description": "`data: <chunk JSON>` events, then `data: [DONE]`.",
}
_STREAMS: Final = {
    "/v1/chat/completions": ("text/event-stream", _SSE_EVENT),
    "/v1/completions": ("text/event-stream", _SSE_EVENT),
    "/api/chat": ("application/x-ndjson", {"$ref": _REF.format(name="OllamaChatReply")}),
    "/api/generate": (
        "application/x-ndjson",
        {"$ref": _REF.format(name="OllamaGenerateReply")},
    ),
}
_EMPTY: Final = {"enum": ["", None]}
# Rules between fields, which msgspec types cannot state.
_RULES: Final[dict[str, dict[str, Any]]] = {
    "OllamaGenerateRequest": {
        "anyOf": [
            {"properties": {"raw": {"enum": [False, None]}}},
            {
                "properties": {
                    "system": _EMPTY,
                    "template": _EMPTY,
                    "context": {"anyOf": [{"type": "null"}, {"maxItems": 0}]},
                }
            },
        ]
    },
    "OllamaShowRequest": {
        "anyOf": [
            {"required": ["model"], "properties": {"model": {"type": "string", "pattern": r"\S"}}},
            {
                "required": ["name"],
                "properties": {"model": _EMPTY, "name": {"type": "string", "pattern": r"\S"}},
            },
        ]
    },
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the data plane, generated by Litestar from the types."""
    config = OpenAPIConfig(
        title="neuronetz-gateway",
        version=version("nz-proxy"),
        description="An authenticating, rate-limiting gateway in front of Ollama.",
        tags=[
            Tag(name=_OPENAI, description="Translated to Ollama's native API and back."),
            Tag(name=_OLLAMA, description="Ollama's own API, forwarded after the checks."),
            Tag(name=_PROBES, description="No key needed; never audited."),
        ],
        components=Components(
            security_schemes={
                "BearerAuth": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="nz_ and 52 base62 characters",
                    description="`Authorization: Bearer nz_…`, the key `create-key` printed.",
                ),
                "ApiKeyHeader": SecurityScheme(
                    type="apiKey",
                    name="x-api-key",
                    security_scheme_in="header",
                    description="The same key, for clients that send `x-api-key`.",
                ),
            }
        ),
    )
    app = Litestar(route_handlers=_HANDLERS, openapi_config=config)
    document: dict[str, Any] = app.openapi_schema.to_schema()
    # Litestar lays out the operations; the component schemas are msgspec's own. Litestar
    # 2.25 renders msgspec constraints of top-level fields only: it drops a bound of 0 and
    # every pattern or bound inside a union, which would make the document claim more than
    # the gateway accepts. msgspec renders exactly what it checks.
    _, components = msgspec.json.schema_components(_BODIES, ref_template=_REF)
    document["components"]["schemas"] = components
    # Litestar documents its own validation 400 for a path parameter; the gateway takes
    # any model id there (an unknown one is the 403).
    del document["paths"]["/v1/models/{model}"]["get"]["responses"]["400"]
    for path, (media_type, schema) in _STREAMS.items():
        ok = document["paths"][path]["post"]["responses"]["200"]
        ok["content"][media_type] = {"schema": schema}
    schemas = document["components"]["schemas"]
    for name, rule in _RULES.items():
        schemas[name].update(rule)
    return document
