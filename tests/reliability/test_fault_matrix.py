"""Every fault of the matrix, under live mixed traffic, against real processes.

Each case asserts SPEC §6.2's behaviour (only the statuses the fault allows), that the
gateway noticed and recovered by itself, and that the books balance: every answered
request audited exactly once, ledger = audit tokens, no leaked slot or reservation.
The figures go to ``$NZ_RELIABILITY_OUT/faults.json`` when that is set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.faults import FAULTS, Fault, run_fault
from tests.reliability.stack import Stack, stack

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

RESULTS: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def production() -> Iterator[Stack]:
    with stack() as running:
        yield running
    out = os.environ.get("NZ_RELIABILITY_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "faults.json").write_text(json.dumps(RESULTS, indent=2) + "\n")


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_fault(production: Stack, fault: Fault) -> None:
    row = await run_fault(production, fault)
    RESULTS.append(row)
    print(json.dumps(row))
    assert set(row["before"]) == {"200"}, row  # healthy before the fault
    assert row["unexpected"] == [], row
    assert row["recover_s"] is not None, row
    if fault.name != "listen-dropped":
        assert row["detect_s"] is not None, row
    else:
        assert row["revocation_s"] < 3, row
    books = row["books_detail"]
    assert not books["missing"], row  # every answered request audited ...
    assert not books["duplicated"], row  # ... exactly once
    assert not books["ledger_mismatch"], row  # ledger = audit tokens
    assert not books["leaked_leases"], row
    assert not books["counter_mismatch"], row  # live counters = ledger
    assert not books["open_journal"], row
    assert row["clean"], row
