"""ASGI callable types, spelled once. The scope is ``AsgiScope``: ``Scope`` is a key's
permission (:mod:`nz_core.scopes`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

__all__ = ["ASGIApp", "AsgiScope", "Message", "Receive", "Send"]

AsgiScope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[AsgiScope, Receive, Send], Awaitable[None]]
