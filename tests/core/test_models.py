"""Model-name normalisation and effective sets (SPEC §4.3, §4.6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nz_core.errors import InvalidValue
from nz_core.models import (
    ModelPolicy,
    effective_models,
    may_use,
    normalize_model,
    parse_model_list,
)
from tests.strategies import model_names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("llama3.2:latest", "llama3.2:latest"),
        ("Mistral:7B", "mistral:7b"),
        ("acme/coder", "acme/coder:latest"),
        ("library/llama3.2", "llama3.2:latest"),
        ("Library/Llama3.2:8B", "llama3.2:8b"),
        ("registry.local:5000/acme/coder", "registry.local:5000/acme/coder:latest"),
        ("registry.local:5000/acme/coder:1b", "registry.local:5000/acme/coder:1b"),
        ("  qwen2.5:7b ", "qwen2.5:7b"),
    ],
)
def test_normalize(name: str, expected: str) -> None:
    assert normalize_model(name) == expected


@given(model_names())
def test_normalize_is_idempotent_and_always_tagged(name: str) -> None:
    once = normalize_model(name)
    assert normalize_model(once) == once
    assert ":" in once.rsplit("/", 1)[-1]


@given(st.frozensets(model_names()), st.frozensets(model_names()), st.booleans())
def test_effective_set(allowed: frozenset[str], found: frozenset[str], allow_all: bool) -> None:
    discovered = frozenset(normalize_model(m) for m in found)
    policy = ModelPolicy.of(allow_all=allow_all, allowed=allowed)
    result = effective_models(policy, discovered)
    assert result <= discovered
    for name in allowed | found:
        assert may_use(policy, discovered, normalize_model(name)) == (
            normalize_model(name) in result
        )
    if allow_all:
        assert result == discovered
    else:
        assert result == {normalize_model(m) for m in allowed} & discovered


@given(st.frozensets(model_names()), st.booleans())
def test_unknown_or_empty_discovery_denies_everything(
    allowed: frozenset[str], allow_all: bool
) -> None:
    policy = ModelPolicy.of(allow_all=allow_all, allowed=allowed)
    assert effective_models(policy, None) == frozenset()
    assert effective_models(policy, frozenset()) == frozenset()


def test_model_list_parsing() -> None:
    assert parse_model_list("llama3.2, Mistral:7B,,") == {"llama3.2:latest", "mistral:7b"}
    with pytest.raises(InvalidValue):
        parse_model_list(" , ,")
