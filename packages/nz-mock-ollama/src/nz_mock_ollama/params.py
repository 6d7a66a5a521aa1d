"""Inference parameters shared by chat and generate, validated with Ollama's messages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nz_mock_ollama.catalogue import ModelEntry
from nz_mock_ollama.errors import OllamaError
from nz_mock_ollama.keep_alive import parse_keep_alive

__all__ = ["DEFAULT_NUM_CTX", "Params", "num_ctx_option", "parse_params"]

DEFAULT_NUM_CTX = 4096
_THINK_LEVELS = frozenset({"low", "medium", "high", "max"})


@dataclass(frozen=True, slots=True)
class Params:
    """What the mock honours of `think`, `format`, `options` and `keep_alive`."""

    think: bool
    fmt: str | Mapping[str, Any] | None
    num_predict: int | None
    stops: tuple[str, ...]
    seed: str
    num_ctx: int
    keep_alive_s: float | None


def _think(value: object, entry: ModelEntry, model: str) -> bool:
    if value is None or value is False:
        return False
    if value is True or (isinstance(value, str) and value in _THINK_LEVELS):
        if not entry.thinking:
            raise OllamaError(400, f'"{model}" does not support thinking')
        return True
    raise OllamaError(
        400,
        f"invalid think value: {json.dumps(value)} "
        '(must be "low", "medium", "high", "max", true, or false)',
    )


def _format(value: object) -> str | Mapping[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, Mapping):
        return value
    raise OllamaError(400, 'invalid format: expected "json" or a valid JSON schema')


def _int_option(options: Mapping[str, Any], name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OllamaError(400, f'invalid option type for "{name}": expected an integer')
    return int(value)


def _stops(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(s for s in value if isinstance(s, str))
    return ()


def num_ctx_option(options: Mapping[str, Any]) -> int:
    """`options.num_ctx`, or the default when absent or not positive."""
    num_ctx = _int_option(options, "num_ctx")
    return num_ctx if num_ctx and num_ctx > 0 else DEFAULT_NUM_CTX


def parse_params(body: Mapping[str, Any], entry: ModelEntry, model: str) -> Params:
    """Validate and extract the inference parameters of a chat or generate body."""
    options = body.get("options") or {}
    try:
        keep_alive_s = parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise OllamaError(400, str(exc)) from None
    num_ctx = num_ctx_option(options)
    return Params(
        think=_think(body.get("think"), entry, model),
        fmt=_format(body.get("format")),
        num_predict=_int_option(options, "num_predict"),
        stops=_stops(options.get("stop")),
        seed=str(options.get("seed", "")),
        num_ctx=num_ctx,
        keep_alive_s=keep_alive_s,
    )
