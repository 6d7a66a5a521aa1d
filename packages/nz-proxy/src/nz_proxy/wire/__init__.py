"""The API's bodies as msgspec types: the one statement of what a request may hold and
what an answer holds, on both surfaces.

* :mod:`nz_proxy.wire.fields`: field types both surfaces share (numbers as Go reads
  them, ``keep_alive``, ``format``, ``think``, Ollama's ``options`` table, tools);
* :mod:`nz_proxy.wire.openai`: the OpenAI-compatible surface (``/v1``);
* :mod:`nz_proxy.wire.ollama`: Ollama's native surface (``/api``), named as Ollama's Go
  types are;
* :mod:`nz_proxy.wire.gokeys`: how Ollama's decoder binds object keys to those types.

:func:`read` is how every request body is taken: bound as Ollama binds it, then checked
against its type, so that what the gateway checks is what Ollama reads (SPEC §4.9).
The same types make the OpenAPI document (:mod:`nz_proxy.openapi`). Every optional
field also takes ``null`` (read as absent), as Ollama's decoder does; unknown fields
are allowed everywhere: Ollama ignores them, and the OpenAI translation drops them.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from nz_proxy.errors import InvalidRequest
from nz_proxy.wire.gokeys import canonical, shape_of

__all__ = ["conform", "conform_value", "read"]

_AT: Final = re.compile(r" - at `\$(.*)`$")
_MISSING: Final = re.compile(r"^Object missing required field `(\w+)`")
# A pattern's source says little to a client; the document describes the format.
_REGEX: Final = re.compile(r"matching regex '.*'", re.DOTALL)
# msgspec names JSON types in backquotes; a client reads words.
_WORDS: Final = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}
_TYPES: Final = re.compile(r"`([a-z]+(?: \| [a-z]+)*)`")


def _words(match: re.Match[str]) -> str:
    return " or ".join(_WORDS.get(name, name) for name in match.group(1).split(" | "))


def conform_value(value: object, schema: Any, param: str | None = None) -> Any:
    """``value`` (decoded JSON) as ``schema``, or :class:`InvalidRequest`.

    ``param`` names where ``value`` sits in the body; the error's ``param`` extends it
    with the path msgspec reports (``options`` → ``options.num_ctx``), down to a
    missing field itself.
    """
    try:
        return msgspec.convert(value, schema, strict=True)
    except msgspec.ValidationError as exc:
        raise _refusal(str(exc), param) from None


def _refusal(text: str, param: str | None) -> InvalidRequest:
    match = _AT.search(text)
    reason = text[: match.start()] if match else text
    where = (param or "") + (match.group(1) if match else "")
    missing = _MISSING.match(reason)
    if missing:
        where = (where + "." + missing.group(1)).removeprefix(".")
        return InvalidRequest(f"'{where}' is required.", param=where)
    where = where.removeprefix(".")
    reason = _TYPES.sub(_words, _REGEX.sub("in the format /openapi.json describes", reason))
    field = f"'{where}'" if where else "The request body"
    message = f"{field} has a wrong type or value: {reason}."
    return InvalidRequest(message, param=where or None)


def conform(value: object, schema: Any, param: str | None = None) -> None:
    """Raise :class:`InvalidRequest` unless ``value`` (decoded JSON) fits ``schema``."""
    conform_value(value, schema, param)


def read(body: dict[str, Any], schema: type[msgspec.Struct]) -> dict[str, Any]:
    """``body`` as Ollama's decoder binds it (keys spelled as its tags, colliding keys
    refused), checked against ``schema``. Whatever is forwarded is encoded from this
    value, never from the client's bytes (SPEC §4.9)."""
    body = canonical(body, shape_of(schema))
    conform(body, schema)
    return body
