"""Structured output: JSON answers for `format`, and tool-call arguments from a JSON schema.

Values are derived from the schema and a seed, never random, so a test can predict them:
strings are words, integers and numbers small, booleans true, an `enum` gives its first
member, arrays one item, objects every declared property.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from nz_mock_ollama.generation import Corpus

__all__ = ["json_answer", "split_json_text", "tool_call", "value_for_schema"]

_JSON_PIECES = re.compile(r"\s*(?:\w+|[^\w\s]+)")
_MAX_DEPTH = 6


def _words(corpus: Corpus, seed: int, count: int) -> str:
    return "".join(t for t in corpus.answer(seed, count * 2) if t.strip(",.")).strip()[:48]


def _schema_type(schema: Mapping[str, Any]) -> object:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and isinstance(schema.get("properties"), Mapping):
        kind = "object"
    return kind


def value_for_schema(schema: object, corpus: Corpus, seed: int, depth: int = 0) -> Any:
    """A value that validates against a (simple) JSON schema."""
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return _words(corpus, seed, 2)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    match _schema_type(schema):
        case "object":
            properties = schema.get("properties")
            if not isinstance(properties, Mapping):
                return {}
            return {
                str(name): value_for_schema(sub, corpus, seed + i + 1, depth + 1)
                for i, (name, sub) in enumerate(properties.items())
            }
        case "array":
            return [value_for_schema(schema.get("items"), corpus, seed + 1, depth + 1)]
        case "integer":
            return seed % 100
        case "number":
            return round((seed % 10_000) / 100, 2)
        case "boolean":
            return True
        case "null":
            return None
        case _:
            return _words(corpus, seed, 2)


def json_answer(fmt: object, corpus: Corpus, seed: int) -> str:
    """The content for a request with `format`: `"json"` or a schema. Spaced like a model's."""
    if isinstance(fmt, Mapping):
        value = value_for_schema(fmt, corpus, seed)
    else:
        value = {"answer": _words(corpus, seed, 6)}
    return json.dumps(value, ensure_ascii=False)


def split_json_text(text: str) -> list[str]:
    """Split JSON text into token-sized pieces (`{"`, `answer`, `":`, ` "`, …) for streaming."""
    return _JSON_PIECES.findall(text)


def tool_call(tool: object, corpus: Corpus, seed: int) -> dict[str, Any]:
    """A native tool call for the first offered tool: `arguments` is an object, not a string."""
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping):
        function = {}
    name = function.get("name")
    parameters = function.get("parameters")
    arguments = value_for_schema(parameters, corpus, seed) if parameters else {}
    if not isinstance(arguments, dict):
        arguments = {}
    return {
        "id": f"call_{secrets.token_hex(4)}",
        "function": {
            "index": 0,
            "name": name if isinstance(name, str) and name else "tool",
            "arguments": arguments,
        },
    }
