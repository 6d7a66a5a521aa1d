"""Model names and the effective model set (SPEC §4.3, §4.6).

Names are compared only after :func:`normalize_model`: a name without a tag means
``:latest``, and Ollama matches names case-insensitively. The effective set of a tenant
is everything discovered when ``allow_all`` is on, otherwise its allowlist intersected
with what was discovered. An unknown or expired discovery means an empty set: deny.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nz_core.errors import InvalidValue

__all__ = [
    "ModelPolicy",
    "effective_models",
    "may_use",
    "model_key",
    "normalize_model",
    "parse_model_list",
]


def normalize_model(name: str) -> str:
    """``llama3.2`` → ``llama3.2:latest``; ``ns/Model:7B`` → ``ns/model:7b``;
    ``library/llama3.2`` → ``llama3.2:latest`` (Ollama's default namespace).

    Only the last path segment can carry a tag, so a registry host with a port
    (``host:5000/ns/model``) is not mistaken for one.
    """
    name = name.strip().lower().removeprefix("library/")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return name + ":latest"
    return name


def model_key(requested: str) -> str | None:
    """The normalised name to look a client's ``requested`` model up by, or ``None`` when
    it cannot name an installed model.

    Ollama's model names are ASCII. A name that is not could still normalise onto one
    (lower-casing turns the Kelvin sign U+212A into ``k``), so it is never looked up:
    the caller treats it as a model outside the set.
    """
    if not requested.isascii():
        return None
    return normalize_model(requested)


def parse_model_list(text: str) -> frozenset[str]:
    """Parse ``"a,b:7b"`` into normalised names.

    Raises:
        InvalidValue: the list names no model.
    """
    names = frozenset(normalize_model(part) for part in text.split(",") if part.strip())
    if not names:
        raise InvalidValue("the model list is empty; name at least one model")
    return names


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """A tenant's model policy: an allowlist, or every discovered model."""

    allow_all: bool = False
    allowed: frozenset[str] = frozenset()

    @classmethod
    def of(cls, *, allow_all: bool, allowed: Iterable[str]) -> ModelPolicy:
        """Build a policy, normalising the allowlist."""
        return cls(allow_all=allow_all, allowed=frozenset(normalize_model(m) for m in allowed))


def effective_models(policy: ModelPolicy, discovered: frozenset[str] | None) -> frozenset[str]:
    """The models a tenant may use right now; ``discovered=None`` (unknown) gives none.

    ``discovered`` must already be normalised (discovery stores normalised names).
    """
    if not discovered:
        return frozenset()
    if policy.allow_all:
        return discovered
    return policy.allowed & discovered


def may_use(policy: ModelPolicy, discovered: frozenset[str] | None, name: str | None) -> bool:
    """Whether ``name`` (normalised; ``None`` for no name) is in the effective set,
    without building the set."""
    if name is None or not discovered or name not in discovered:
        return False
    return policy.allow_all or name in policy.allowed
