"""Key scopes (SPEC §4.3, §4.12): ``chat`` covers chat and generate, ``embeddings`` the
embedding endpoints. Listing models, ``/api/show`` and ``/api/version`` need any key.

``residency`` is a privilege on top of those: its requests may unload a model
(``keep_alive: 0``) and keep one loaded beyond the gateway's bounds. It grants no
endpoint of its own, so it is only given with ``chat`` or ``embeddings``, and keys get
it only when asked for (:data:`DEFAULT_SCOPES`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Final

from nz_core.errors import InvalidValue

__all__ = ["ALL_SCOPES", "DEFAULT_SCOPES", "Scope", "check_scopes", "format_scopes", "parse_scopes"]


class Scope(StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    RESIDENCY = "residency"


ALL_SCOPES: Final = frozenset(Scope)
#: What a key gets unless told otherwise: every endpoint, no residency privilege.
DEFAULT_SCOPES: Final = frozenset({Scope.CHAT, Scope.EMBEDDINGS})
_KNOWN: Final = ", ".join(Scope)


def check_scopes(scopes: Iterable[Scope]) -> frozenset[Scope]:
    """The scopes as a set a key may hold.

    Raises:
        InvalidValue: the set is empty, or ``residency`` comes without ``chat`` or
            ``embeddings``.
    """
    found = frozenset(scopes)
    if not found & DEFAULT_SCOPES:
        raise InvalidValue(
            "a key needs chat or embeddings (residency only adds to them)"
            if found
            else f"at least one scope is required ({_KNOWN})"
        )
    return found


def parse_scopes(text: str) -> frozenset[Scope]:
    """Parse a comma-separated scope list such as ``"chat,embeddings"``.

    Raises:
        InvalidValue: the list is empty, names an unknown scope, or gives ``residency``
            alone.
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    scopes: set[Scope] = set()
    for name in names:
        try:
            scopes.add(Scope(name))
        except ValueError:
            raise InvalidValue(f"unknown scope '{name}' (expected {_KNOWN})") from None
    return check_scopes(scopes)


def format_scopes(scopes: frozenset[Scope]) -> str:
    """The canonical stored form: sorted, comma-separated (``"chat,embeddings"``)."""
    return ",".join(sorted(scope.value for scope in scopes))
