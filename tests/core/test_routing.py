"""The routing rule (SPEC §4.10): warm first, spill over only when it pays."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from nz_core.routing import SPILL_MARGIN, Ewma, Node, PeakEwma, Reason, route

nodes = st.builds(
    Node,
    name=st.text("abcdef", min_size=1, max_size=4),
    parallel=st.integers(1, 4),
    in_flight=st.integers(0, 12),
    resident=st.booleans(),
    loading=st.booleans(),
    ttfb_s=st.floats(0.01, 5),
    busy_s=st.floats(0.1, 60),
    load_s=st.floats(1, 60),
)


@given(st.lists(nodes, max_size=6), st.randoms(use_true_random=False))
def test_the_choice_follows_the_rule(candidates: list[Node], rng: random.Random) -> None:
    choice = route(candidates, rng)
    if not candidates:
        assert choice is None
        return
    assert choice is not None
    assert any(choice.node is node for node in candidates)
    warm = [node for node in candidates if node.resident]
    free_warm = [node for node in warm if node.free]
    if free_warm:
        assert choice.reason is Reason.WARM
        assert choice.node.resident
        assert choice.node.free
        costs = sorted((node.in_flight + 1) * node.ttfb_s for node in free_warm)
        if len(costs) > 1 and costs[-1] > costs[-2]:  # two choices never take the worst
            assert (choice.node.in_flight + 1) * choice.node.ttfb_s < costs[-1]
    elif warm:
        assert choice.reason in (Reason.QUEUE, Reason.SPILL)
        soonest = min(node.wait_s for node in warm)
        if choice.reason is Reason.SPILL:
            assert not choice.node.resident
            assert choice.node.free
            assert not choice.node.loading
            assert soonest > choice.node.load_s * SPILL_MARGIN
        else:
            assert choice.node.resident
            assert choice.node.wait_s == soonest
    else:
        assert choice.reason in (Reason.JOIN, Reason.COLD)
        if any(node.loading for node in candidates):
            assert choice.reason is Reason.JOIN
            assert choice.node.loading


def decided(candidates: list[Node]) -> tuple[str, Reason] | None:
    choice = route(candidates)
    return None if choice is None else (choice.node.name, choice.reason)


def test_a_warm_node_takes_every_sequential_request() -> None:
    warm = Node("a", parallel=1, in_flight=0, resident=True)
    cold = Node("b", parallel=1, in_flight=0, resident=False, load_s=2.0)
    rng = random.Random(7)
    choices = [route([cold, warm], rng) for _ in range(50)]
    assert [(c.node.name, c.reason) for c in choices if c is not None] == [("a", Reason.WARM)] * 50


def test_a_full_warm_node_spills_over_only_when_waiting_costs_more_than_a_load() -> None:
    cold = Node("b", parallel=1, in_flight=0, resident=False, load_s=2.0)
    short = Node("a", parallel=1, in_flight=1, resident=True, busy_s=1.0)  # waits 1 s
    assert decided([short, cold]) == ("a", Reason.QUEUE)
    long = Node("a", parallel=1, in_flight=3, resident=True, busy_s=2.0)  # waits 6 s
    assert decided([long, cold]) == ("b", Reason.SPILL)
    loading = Node("b", parallel=2, in_flight=1, resident=False, loading=True, load_s=2.0)
    # One load of the model at a time per node.
    assert decided([long, loading]) == ("a", Reason.QUEUE)


def test_with_nothing_warm_a_running_load_is_joined() -> None:
    idle = Node("a", parallel=1, in_flight=0, resident=False)
    loading = Node("b", parallel=2, in_flight=1, resident=False, loading=True)
    assert decided([idle, loading]) == ("b", Reason.JOIN)
    assert decided([idle, Node("c", parallel=1, in_flight=1, resident=False)]) == ("a", Reason.COLD)


def test_the_wait_counts_the_requests_ahead_per_slot() -> None:
    assert Node("a", 2, 1, True, busy_s=4).wait_s == 0
    assert Node("a", 2, 2, True, busy_s=4).wait_s == 4
    assert Node("a", 2, 4, True, busy_s=4).wait_s == 8
    assert Node("a", 1, 3, True, busy_s=4).wait_s == 12


def test_estimates_start_from_the_prior_and_peak_ewma_jumps_up_at_once() -> None:
    plain, peak = Ewma(20.0), PeakEwma(0.5)
    assert (plain.value, plain.measured) == (20.0, False)
    plain.observe(2.0)
    assert plain.value == 2.0  # the first measurement replaces the prior
    plain.observe(12.0)
    assert plain.value == 5.0
    peak.observe(0.2)
    peak.observe(3.0)
    assert peak.value == 3.0  # a slow answer counts in full at once
    peak.observe(1.0)
    assert 2.0 < peak.value < 3.0  # and fades slowly
