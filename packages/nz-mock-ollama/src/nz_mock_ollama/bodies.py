"""Request bodies read the way gin's `ShouldBindJSON` reads them.

The Content-Type is ignored (curl sends form-urlencoded and Ollama still parses JSON), an
empty body is `missing request body`, and decoding errors and wrong field types come back
in Go's words, so the gateway's error-passing tests see what real Ollama says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from nz_mock_ollama.errors import OllamaError

__all__ = ["Field", "go_decode_error", "json_kind", "parse_body", "read_body"]


@dataclass(frozen=True, slots=True)
class Field:
    """A request field's JSON kind and the Go type named in a type-mismatch error."""

    kind: str  # "string" | "bool" | "number" | "int" | "array" | "object" | "any"
    go_type: str


STRING = Field("string", "string")
BOOL = Field("bool", "bool")
INT = Field("int", "int")
OBJECT = Field("object", "map[string]interface {}")
ANY = Field("any", "")


def json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _matches(field: Field, value: object) -> bool:
    match field.kind:
        case "any":
            return True
        case "int":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case kind:
            return json_kind(value) == kind


def _quote_char(ch: str) -> str:
    # Go's decoder quotes the offending byte like a rune literal: 'x', '\n', '\''.
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + json.dumps(ch, ensure_ascii=False)[1:-1] + "'"


_LITERALS = {"t": "true", "f": "false", "n": "null"}


def go_decode_error(doc: str, exc: json.JSONDecodeError) -> str:
    """Translate Python's decode error to the text Go's `encoding/json` would give."""
    if exc.pos >= len(doc.rstrip()) or exc.msg.startswith("Unterminated"):
        return "unexpected EOF"
    literal = _LITERALS.get(doc[exc.pos]) if exc.msg == "Expecting value" else None
    if literal is not None:
        # Go reads `nonsense` as a broken `null`: name the first byte that does not fit.
        for offset, expected in enumerate(literal[1:], start=exc.pos + 1):
            if offset >= len(doc):
                return "unexpected EOF"
            if doc[offset] != expected:
                return (
                    f"invalid character {_quote_char(doc[offset])} in literal {literal} "
                    f"(expecting {_quote_char(expected)})"
                )
    ch = _quote_char(doc[exc.pos])
    context = {
        "Expecting value": "looking for beginning of value",
        "Expecting property name enclosed in double quotes": (
            "looking for beginning of object key string"
        ),
        "Expecting ':' delimiter": "after object key",
        "Expecting ',' delimiter": "after object key:value pair",
        "Extra data": "after top-level value",
        "Invalid control character at": "in string literal",
        "Invalid \\escape": "in string escape code",
    }.get(exc.msg, "looking for beginning of value")
    return f"invalid character {ch} {context}"


def _reject_constant(name: str) -> Any:
    # Python accepts NaN/Infinity; Go's decoder stops at their first letter.
    raise OllamaError(
        400, f"invalid character '{name.lstrip('-')[0]}' looking for beginning of value"
    )


def parse_body(
    raw: bytes, go_struct: str, fields: Mapping[str, Field] | None = None
) -> dict[str, Any]:
    """Decode a body into a dict, raising OllamaError(400) the way Ollama would."""
    if not raw.strip():
        raise OllamaError(400, "missing request body")
    try:
        doc = raw.decode()
    except UnicodeDecodeError:
        raise OllamaError(400, "invalid character in string literal") from None
    try:
        data = json.loads(doc, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise OllamaError(400, go_decode_error(doc, exc)) from None
    if data is None:  # `null` decodes into a zero struct in Go
        return {}
    if not isinstance(data, dict):
        raise OllamaError(
            400, f"json: cannot unmarshal {json_kind(data)} into Go value of type api.{go_struct}"
        )
    for name, field in (fields or {}).items():
        value = data.get(name)
        if value is not None and not _matches(field, value):
            kind = json_kind(value)
            if kind == "number":
                kind = f"number {value}"
            raise OllamaError(
                400,
                f"json: cannot unmarshal {kind} into Go struct field "
                f"{go_struct}.{name} of type {field.go_type}",
            )
    return data


async def read_body(
    request: web.Request, go_struct: str, fields: Mapping[str, Field] | None = None
) -> dict[str, Any]:
    """Read and decode the request body whatever its Content-Type."""
    return parse_body(await request.read(), go_struct, fields)
