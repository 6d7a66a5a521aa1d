"""The OpenAI-compatible surface's bodies (``/v1``): what a request may hold, and what
its answers hold."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from nz_proxy.wire.fields import (
    Base64,
    Effort,
    Format,
    Int64,
    KeepAlive,
    ModelName,
    Options,
    Penalty,
    PositiveInt,
    Stop,
    Temperature,
    Think,
    Tool,
    TopP,
    whole,
)

# What Ollama's image decoder takes: png, jpeg or webp as a data URI (`data:;base64,`
# is its spelling for "type unknown"), with canonical, non-empty base64.
_B64_QUANTA: Final = (
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)"
)
DataImage = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"data:(?:image/(?:png|jpeg|jpg|webp))?;base64," + _B64_QUANTA),
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
        pattern=whole(r"(?:[ \t\n\r]*\{[\s\S]*\}[ \t\n\r]*)?"),
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


# Ollama answers with at most 20 alternatives per token (and refuses more).
TopLogprobs = Annotated[int, msgspec.Meta(ge=0, le=20)]
# OpenAI's own bound, and MAX_CHOICES's.
Choices = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        le=128,
        description="How many choices to generate, each its own call to the model; each "
        "counts against the key's limits and reserves its own completion cap. At most "
        "`MAX_CHOICES` (20 unless the operator says otherwise) per request, counting "
        "every prompt of a batch.",
    ),
]


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
    n: Choices | None = None
    logprobs: Annotated[
        bool | None, msgspec.Meta(description="Return each token's log probability.")
    ] = None
    top_logprobs: Annotated[
        TopLogprobs | None,
        msgspec.Meta(description="Alternatives listed per token (0-20); needs `logprobs`."),
    ] = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    format: Format | None = None
    think: Think | None = None


class CompletionRequest(msgspec.Struct):
    """A legacy OpenAI completion: one prompt, or a batch of prompts with one choice
    each (`n` each, in prompt order)."""

    model: ModelName
    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1)]
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
    n: Choices | None = None
    logprobs: Annotated[
        TopLogprobs | None,
        msgspec.Meta(
            description="Return each token's log probability and this many alternatives (0-20)."
        ),
    ] = None
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
                pattern=whole("[Ff][Ll][Oo][Aa][Tt]|[Bb][Aa][Ss][Ee]64"),
                description="`float` (the default) or `base64`, in any case.",
            ),
        ]
        | None
    ) = None
    dimensions: PositiveInt | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    truncate: bool | None = None


# -- answers ------------------------------------------------------------------------------


class OpenAIError(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(msgspec.Struct):
    """Every refusal on `/v1` (and on the probes)."""

    error: OpenAIError


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


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: Annotated[list[int] | None, msgspec.Meta(description="The token's UTF-8 bytes.")]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(msgspec.Struct):
    content: list[TokenLogprob]
    refusal: None


class ChatChoice(msgspec.Struct):
    index: Annotated[int, msgspec.Meta(description="The choice's place: 0 to `n` - 1.")]
    message: AssistantReply
    logprobs: Annotated[
        ChatLogprobs | None, msgspec.Meta(description="Null unless `logprobs` was asked.")
    ]
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


class TextLogprobs(msgspec.Struct):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: Annotated[
        list[dict[str, float]], msgspec.Meta(description="Per token: alternative → logprob.")
    ]
    text_offset: Annotated[
        list[int], msgspec.Meta(description="Where each token starts in `text`.")
    ]


class TextChoice(msgspec.Struct):
    text: str
    index: Annotated[
        int, msgspec.Meta(description="Prompt-major: the prompt's place * `n` + the choice's.")
    ]
    logprobs: Annotated[
        TextLogprobs | None, msgspec.Meta(description="Null unless `logprobs` was asked.")
    ]
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
