"""Limit inheritance: key → tenant, NULL inherits, NULL on both is unlimited."""

from __future__ import annotations

import pytest
from hypothesis import given

from nz_core.errors import InvalidValue
from nz_core.limits import LIMIT_MAX, Limits, effective_limits, validate_limit
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


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", True, LIMIT_MAX + 1, 10**12])
def test_invalid_limits_are_refused(value: object) -> None:
    with pytest.raises(InvalidValue):
        validate_limit("rpm", value)
    with pytest.raises(InvalidValue):
        Limits(rpm=value)  # type: ignore[arg-type]


def test_the_largest_limit_fits_the_column() -> None:
    assert Limits(rpm=LIMIT_MAX, tpm=LIMIT_MAX, concurrent=LIMIT_MAX).tpm == 2**31 - 1
