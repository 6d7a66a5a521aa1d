"""Limit inheritance: key → tenant, NULL inherits, NULL on both is unlimited."""

from __future__ import annotations

import pytest
from hypothesis import given

from nz_core.errors import InvalidValue
from nz_core.limits import Limits, effective_limits, validate_limit
from tests.strategies import limit_sets


@given(limit_sets(), limit_sets())
def test_key_value_wins_else_tenant_value(key: Limits, tenant: Limits) -> None:
    result = effective_limits(key, tenant)
    for name in ("rpm", "tpm", "concurrent"):
        own, inherited = getattr(key, name), getattr(tenant, name)
        assert getattr(result, name) == (own if own is not None else inherited)


@given(limit_sets())
def test_unset_key_inherits_everything(tenant: Limits) -> None:
    assert effective_limits(Limits(), tenant) == tenant
    assert effective_limits(tenant, Limits()) == tenant


def test_unlimited_when_both_unset() -> None:
    assert effective_limits(Limits(), Limits()).unlimited


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", True])
def test_invalid_limits_are_refused(value: object) -> None:
    with pytest.raises(InvalidValue):
        validate_limit("rpm", value)
    with pytest.raises(InvalidValue):
        Limits(rpm=value)  # type: ignore[arg-type]
