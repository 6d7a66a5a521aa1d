"""Key scopes (SPEC §4.3): ``chat`` covers chat and generate, ``embeddings`` the
embedding endpoints. Listing models, ``/api/show`` and ``/api/version`` need any key."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from nz_core.errors import InvalidValue

__all__ = ["ALL_SCOPES", "Scope", "format_scopes", "parse_scopes"]


class Scope(StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"


ALL_SCOPES: Final = frozenset(Scope)


def parse_scopes(text: str) -> frozenset[Scope]:
    """Parse a comma-separated scope list such as ``"chat,embeddings"``.

    Raises:
        InvalidValue: the list is empty or names an unknown scope.
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise InvalidValue("at least one scope is required (chat, embeddings)")
    scopes: set[Scope] = set()
    for name in names:
        try:
            scopes.add(Scope(name))
        except ValueError:
            raise InvalidValue(f"unknown scope '{name}' (expected chat or embeddings)") from None
    return frozenset(scopes)


def format_scopes(scopes: frozenset[Scope]) -> str:
    """The canonical stored form: sorted, comma-separated (``"chat,embeddings"``)."""
    return ",".join(sorted(scope.value for scope in scopes))
