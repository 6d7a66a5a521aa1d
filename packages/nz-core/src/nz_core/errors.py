"""The control plane's error tree.

Every failure an ``nz_core`` function reports on purpose is an :class:`NzError`, so a
caller (the CLI, ``neuronetz-console``) can catch one type and show ``str(error)``,
which is always a single line fit for an operator.

``NzError``
    ``MalformedKey``: the text is not an API key; raised before any I/O.
    ``InvalidValue``: an argument is out of range (negative limit, unknown scope, ...).
    ``NotFound``: ``TenantNotFound``, ``KeyNotFound``, ``BackendNotFound``.
    ``AlreadyExists``: ``TenantExists``, ``BackendExists`` (its name or its URL).
    ``DatabaseError``: ``DatabaseUnreachable``, ``NotMigrated``, ``RowsRefused``.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "BackendExists",
    "BackendNotFound",
    "DatabaseError",
    "DatabaseUnreachable",
    "InvalidValue",
    "KeyNotFound",
    "MalformedKey",
    "NotFound",
    "NotMigrated",
    "NzError",
    "RowsRefused",
    "TenantExists",
    "TenantNotFound",
]


class NzError(Exception):
    """Base of every error ``nz_core`` raises deliberately."""


class MalformedKey(NzError):
    """The presented text does not have the shape of an API key."""

    def __init__(self) -> None:
        # Never echo the text: it may be a real key with a typo.
        super().__init__("malformed API key")


class InvalidValue(NzError):
    """An argument is outside what the schema allows."""


class NotFound(NzError):
    """The named object does not exist."""


class TenantNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown tenant '{name}'")
        self.name = name


class KeyNotFound(NotFound):
    def __init__(self, prefix: str) -> None:
        super().__init__(f"unknown key prefix '{prefix}'")
        self.prefix = prefix


class BackendNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown backend '{name}'")
        self.name = name


class AlreadyExists(NzError):
    """The object would violate a uniqueness rule."""


class TenantExists(AlreadyExists):
    def __init__(self, name: str) -> None:
        super().__init__(f"tenant '{name}' already exists")
        self.name = name


class BackendExists(AlreadyExists):
    """A backend has this name, or already points at this URL (one node, one backend:
    two would count its slots twice)."""

    def __init__(self, name: str, url: str | None = None) -> None:
        if url is None:
            super().__init__(f"backend '{name}' already exists")
        else:
            super().__init__(f"backend '{name}' already points at {url}")
        self.name = name


class DatabaseError(NzError):
    """The database cannot serve the operation."""


class DatabaseUnreachable(DatabaseError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"database unreachable: {detail}")


class NotMigrated(DatabaseError):
    def __init__(self) -> None:
        super().__init__(
            "database schema is missing or out of date; run `neuronetz-gateway migrate`"
        )


class RowsRefused(DatabaseError):
    """The database refused a batch because of a value in it, not because it is away:
    nothing was written, and the same rows would be refused again. The message names
    the kind of refusal (SQLSTATE, constraint), never a value."""
