"""Backends: the Ollama nodes behind the gateway (SPEC §4.10), as values.

A backend is a ``name``, a ``url``, a ``parallel`` (the node's ``OLLAMA_NUM_PARALLEL``)
and a ``status``: ``active``, or ``draining`` (no new requests; the ones in flight
finish). They are rows of ``gateway.backends``; while that table is empty,
``OLLAMA_BASE_URLS`` (or ``OLLAMA_BASE_URL``) defines them, named ``node-1``,
``node-2``, … in the order given, so a single-node setup needs no step and behaves as
before. :func:`effective_backends` makes that choice, :func:`configured_backends`
builds the backends from the variables.

Pure: this module validates and decides; :mod:`nz_core.backend_admin` stores.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from nz_core.errors import InvalidValue
from nz_core.residency import ResidencyPolicy

__all__ = [
    "MAX_PARALLEL",
    "Backend",
    "BackendStatus",
    "Topology",
    "check_backend_name",
    "check_backend_url",
    "check_parallel",
    "configured_backends",
    "effective_backends",
]

# Names end up in metric labels, audit rows and `list-backends` lines: keep them tokens.
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# The column is a 32-bit integer; no node runs anywhere near this many in parallel.
MAX_PARALLEL: Final = 2**31 - 1


class BackendStatus(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class Backend:
    """One Ollama node. Backends from the environment have no timestamps."""

    name: str
    url: str
    parallel: int = 1
    status: BackendStatus = BackendStatus.ACTIVE
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.status is BackendStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class Topology:
    """What routing needs from the database, read at once
    (:func:`nz_core.backend_admin.load_topology`).

    ``backends`` are the effective ones (the table's rows, or the configured ones while
    the table is empty, then ``configured`` is true); ``policies`` are the residency
    policies by normalised model name.
    """

    backends: tuple[Backend, ...]
    configured: bool
    policies: Mapping[str, ResidencyPolicy] = field(default_factory=dict)

    def pinned_num_ctx(self, model: str) -> int | None:
        """The context size pinned for ``model`` (normalised), or ``None``."""
        policy = self.policies.get(model)
        return None if policy is None else policy.num_ctx


def check_backend_name(name: str) -> str:
    """The name, if it is 1-64 lowercase letters, digits, ``.``, ``_`` or ``-``,
    starting with a letter or digit.

    Raises:
        InvalidValue: it is not.
    """
    if not _NAME.fullmatch(name):
        raise InvalidValue(
            f"backend name {name!r} must be 1-64 characters of a-z, 0-9, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def check_backend_url(url: str) -> str:
    """The URL of an Ollama node, normalised (scheme and host lower case, no trailing
    ``/``), so that one node has one spelling.

    Raises:
        InvalidValue: not ``http``/``https``, no host, a bad port, credentials (they
            would be shown by ``list-backends`` and stored in clear), a query or a
            fragment (the gateway appends ``/api/...`` paths), or spaces.
    """
    text = url.strip()
    if not text or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise InvalidValue(f"backend URL {url!r} must be one http:// or https:// URL")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidValue(f"backend URL {text!r} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise InvalidValue("backend URL must not contain credentials (user:password@)")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidValue(f"backend URL {text!r} must not have a query or a fragment")
    if not parts.hostname:
        raise InvalidValue(f"backend URL {text!r} has no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise InvalidValue(f"backend URL {text!r} has an invalid port")
    host = parts.hostname.lower()
    if ":" in host:  # IPv6, which urlsplit returns without its brackets
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def check_parallel(parallel: int) -> int:
    """``parallel`` if it is a whole number from 1 up.

    Raises:
        InvalidValue: it is not.
    """
    if isinstance(parallel, bool) or not isinstance(parallel, int):
        raise InvalidValue(f"parallel must be a whole number, got {parallel!r}")
    if not 1 <= parallel <= MAX_PARALLEL:
        raise InvalidValue(f"parallel must be at least 1 (got {parallel})")
    return parallel


def configured_backends(urls: Sequence[str]) -> tuple[Backend, ...]:
    """The backends ``OLLAMA_BASE_URLS`` (or ``OLLAMA_BASE_URL``, as one URL) define:
    ``node-1``, ``node-2``, … in order, each active with ``parallel`` 1.

    Raises:
        InvalidValue: a URL is invalid, or two name the same node.
    """
    backends: list[Backend] = []
    seen: set[str] = set()
    for position, url in enumerate(urls, start=1):
        normalized = check_backend_url(url)
        if normalized in seen:
            raise InvalidValue(f"backend URL {normalized!r} is listed twice")
        seen.add(normalized)
        backends.append(Backend(name=f"node-{position}", url=normalized))
    return tuple(backends)


def effective_backends(
    stored: Sequence[Backend], configured: Sequence[Backend]
) -> tuple[tuple[Backend, ...], bool]:
    """The backends in force, and whether they are the configured ones: the stored rows
    when there are any (even if every one is draining), else the configured ones."""
    if stored:
        return tuple(stored), False
    return tuple(configured), True
