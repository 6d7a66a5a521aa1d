"""Field types the two surfaces share: numbers as Go reads them, model names, Ollama's
``keep_alive``, ``format``, ``think``, its ``options`` table and tool definitions."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from nz_proxy.wire.gokeys import decoded_as_map

__all__ = [
    "Base64",
    "Effort",
    "Format",
    "Int64",
    "KeepAlive",
    "ModelName",
    "Options",
    "Penalty",
    "PositiveInt",
    "Stop",
    "Temperature",
    "Think",
    "Tool",
    "ToolFunction",
    "ToolParameters",
    "ToolProperty",
    "TopP",
    "whole",
]

INT64_MAX: Final = 2**63 - 1


def whole(pattern: str) -> str:
    """``pattern`` matching a whole string: ``$`` also matches before a final newline in
    Python's ``re`` (msgspec) but not in JSON Schema's ECMA-262 dialect; this lookahead
    means "end of text" in both."""
    return rf"^(?:{pattern})(?![\s\S])"


Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=INT64_MAX)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
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
    msgspec.Meta(pattern=whole(r"[A-Za-z0-9+/]*={0,2}"), description="Base64 image data."),
]
# Seconds as text, or Go's time.ParseDuration grammar (both micro signs).
# Go's time.ParseDuration grammar, with a unit on every number ("300" is refused, "0"
# is the one exception), both micro signs. Narrowed so that no accepted string can
# overflow Go's int64 nanoseconds: at most five digits before a point and four parts
# (4 x 99999.9h is about 1.4e18 ns), which no real keep-alive comes near.
_DECIMAL: Final = r"(?:[0-9]{1,5}(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION: Final = rf"[-+]?(?:0|(?:{_DECIMAL}(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h)){{1,4}})"
KeepAlive = Annotated[
    float | Annotated[str, msgspec.Meta(pattern=whole(_DURATION))],
    msgspec.Meta(
        description="How long the model stays loaded: seconds, or a Go duration such as "
        '`"5m"` or `"1h30m"` (a unit on every number). Negative: forever; `0`: unload now.'
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
    """Ollama's model options, typed as Ollama's own table types them (``api.Options``
    and ``api.Runner``, plus the options older Ollama versions took): a known option
    with a wrong type is a 400 here, where Ollama would answer 500. Unknown options pass
    to Ollama, which ignores them. Keys match exactly, as Ollama reads them."""

    num_predict: Int64 | None = None
    num_ctx: Int64 | None = None
    num_keep: Int64 | None = None
    num_batch: Int64 | None = None
    num_gpu: Int64 | None = None
    main_gpu: Int64 | None = None
    num_thread: Int64 | None = None
    draft_num_predict: Int64 | None = None
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
    # Options of older Ollama versions, typed as those versions read them.
    mirostat: Int64 | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    tfs_z: float | None = None
    penalize_newline: bool | None = None
    numa: bool | None = None
    num_gqa: Int64 | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mlock: bool | None = None
    rope_frequency_base: float | None = None
    rope_frequency_scale: float | None = None


# Go reads `options` as a map: its keys match exactly (Ollama ignores `NUM_PREDICT`), but
# one that folds onto a key the gateway sets, or onto another key, is refused all the same.
decoded_as_map(Options, governed=("num_predict", "num_ctx"))


class ToolProperty(msgspec.Struct):
    """One parameter of a tool, as Ollama's ``api.ToolProperty`` binds it."""

    any_of: list[ToolProperty] | None = msgspec.field(default=None, name="anyOf")
    type: Any = None
    items: Any = None
    description: Any = None
    enum: Any = None
    properties: dict[str, ToolProperty] | None = None
    required: Any = None


class ToolParameters(msgspec.Struct):
    """A JSON Schema of a tool's arguments, as Ollama's ``api.ToolFunctionParameters``
    binds it."""

    type: Any = None
    defs: Any = msgspec.field(default=None, name="$defs")
    items: Any = None
    required: Any = None
    properties: dict[str, ToolProperty] | None = None


class ToolFunction(msgspec.Struct):
    name: str | None = None
    description: str | None = None
    parameters: Annotated[
        ToolParameters | None, msgspec.Meta(description="A JSON Schema of the arguments.")
    ] = None


class Tool(msgspec.Struct):
    """A tool the model may call (OpenAI's function-tool shape, which Ollama shares)."""

    type: str | None = None
    function: ToolFunction | None = None
    items: Any = None


Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
TopP = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
