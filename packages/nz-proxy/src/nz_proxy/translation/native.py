"""Native bodies as admission sees them: the completion cap a body asks for, setting
the cap the gateway reserved, and the size of every input the backend processes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from nz_core.residency import keep_alive_seconds
from nz_proxy.errors import InvalidRequest

__all__ = [
    "apply_completion_cap",
    "check_keep_alive",
    "prompt_text_bytes",
    "requested_completion_cap",
]

_encode: Final = msgspec.json.Encoder().encode


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


def _list_len(value: object) -> int:
    return len(value) if isinstance(value, list) else 0


_MESSAGE_TEXT: Final = ("role", "content", "thinking", "tool_name", "tool_call_id")
_BODY_TEXT: Final = ("system", "prompt", "suffix", "template")


def prompt_text_bytes(native_body: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(UTF-8 bytes of prompt text, messages, images, ``context`` token ids) of a
    canonical native body: every input the backend processes (SPEC §4.4).

    Text counted: each message's ``role``, ``content``, ``thinking``, ``tool_name``,
    ``tool_call_id`` and tool calls (as JSON); ``system``, ``prompt``, ``suffix``,
    ``template``; embedding ``input`` (string or list); tool definitions as JSON.
    Images (of messages and of the body) and ``context`` ids are counted apart: the
    estimate prices them per item; each item of a list ``input`` counts as a message.
    Works on ``/api/chat``, ``/api/generate``, ``/api/embed`` and ``/api/embeddings``
    bodies; values of the wrong type count as nothing (they are refused before this is
    asked).
    """
    size = 0
    n_messages = 0
    n_images = _list_len(native_body.get("images"))
    messages = native_body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            n_messages += 1
            size += sum(_text_len(message.get(key)) for key in _MESSAGE_TEXT)
            calls = message.get("tool_calls")
            if calls:
                size += len(_encode(calls))
            n_images += _list_len(message.get("images"))
    size += sum(_text_len(native_body.get(key)) for key in _BODY_TEXT)
    items = native_body.get("input")
    if isinstance(items, list):
        size += sum(_text_len(item) for item in items)
        # Each input is tokenised on its own, with its own start and end tokens: 2,048
        # one-letter inputs are thousands of tokens, not a few hundred bytes.
        n_messages += len(items)
    else:
        size += _text_len(items)
    tools = native_body.get("tools")
    if tools:
        size += len(_encode(tools))
    return size, n_messages, n_images, _list_len(native_body.get("context"))


def check_keep_alive(native_body: Mapping[str, Any]) -> None:
    """Refuse a ``keep_alive`` Ollama would refuse: a duration string Go's parser does
    not take (``"300"`` has no unit, ``"99999999999h"`` overflows)."""
    value = native_body.get("keep_alive")
    if isinstance(value, str):
        try:
            keep_alive_seconds(value)
        except ValueError as exc:
            raise InvalidRequest(f"'keep_alive': {exc}.", param="keep_alive") from None
