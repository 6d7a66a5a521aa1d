"""Both state stores (SPEC §4.4, §14).

The deterministic suite runs on the in-process store and on the real Redis (its own
database, one API-key prefix per test). The in-process store runs the admission
algorithm itself (:class:`nz_core.limiter.KeyState`); a stateful property test holds
the Lua scripts to it, and another checks the rules themselves on the in-process store
against the test's own bookkeeping. Time is a clock the test moves.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from nz_core.budgets import Period
from nz_core.limiter import Ask, BudgetLine, KeyState
from nz_core.limits import Limits
from nz_proxy.admission.stores import Settled, StateStore
from nz_proxy.admission.stores.memory import MemoryStore
from nz_proxy.admission.stores.redis import RedisStore, key_names
from tests import services

STATE_DB = services.REDIS_DB + 2


class Clock:
    def __init__(self, start: int = 1_800_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


async def _nothing() -> None:
    return None


def make_store(kind: str, clock: Clock) -> tuple[StateStore, Callable[[], Any]]:
    """A store and a coroutine function that closes what it opened."""
    if kind == "memory":
        return MemoryStore(clock=clock), _nothing
    client = aioredis.Redis.from_url(services.redis_url(STATE_DB))
    return RedisStore(client, clock=clock), client.aclose


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[StateStore, Clock]]:
    clock = Clock()
    made, close = make_store(request.param, clock)
    try:
        yield made, clock
    finally:
        await close()


def prefix() -> str:
    return "nz_" + uuid.uuid4().hex[:9]


def ask(rid: str | None = None, **kwargs: Any) -> Ask:
    base: dict[str, Any] = {"rid": rid or uuid.uuid4().hex, "inference": True, "limits": Limits()}
    return Ask(**(base | kwargs))


# -- deterministic behaviour ----------------------------------------------------


async def test_exact_request_window(store: tuple[StateStore, Clock]) -> None:
    state, clock = store
    key = prefix()
    limits = Limits(rpm=5)
    results = []
    for second in range(6):
        clock.now += 1000 if second else 0
        results.append(await state.admit(key, ask(limits=limits, inference=False), b""))
    assert [r.admitted for r in results] == [True] * 5 + [False]
    denied = results[-1]
    assert denied.reason == "rpm"
    assert denied.retry_after_ms == 55_000  # the first request leaves the window then
    clock.now += 54_999
    assert not (await state.admit(key, ask(limits=limits, inference=False), b"")).admitted
    clock.now += 1
    assert (await state.admit(key, ask(limits=limits, inference=False), b"")).admitted


async def test_leases_free_slots_on_settle_or_expiry(store: tuple[StateStore, Clock]) -> None:
    state, clock = store
    key = prefix()
    limits = Limits(concurrent=2)
    first, second = ask(limits=limits, lease_ms=30_000), ask(limits=limits, lease_ms=30_000)
    assert (await state.admit(key, first, b"")).admitted
    assert (await state.admit(key, second, b"")).admitted
    third = await state.admit(key, ask(limits=limits), b"")
    assert (third.admitted, third.reason) == (False, "concurrency")
    assert await state.settle(key, first, 0, b"") is Settled.SETTLED
    assert await state.settle(key, first, 0, b"") is Settled.UNKNOWN  # exactly once
    assert (await state.admit(key, ask(limits=limits), b"")).admitted
    # A crashed replica never settles: its slot frees itself when the lease runs out.
    assert not (await state.admit(key, ask(limits=limits), b"")).admitted
    clock.now += 30_001
    assert (await state.admit(key, ask(limits=limits), b"")).admitted


async def test_renewed_leases_stay_held(store: tuple[StateStore, Clock]) -> None:
    state, clock = store
    key = prefix()
    limits = Limits(concurrent=1)
    stream = ask(limits=limits, lease_ms=10_000)
    assert (await state.admit(key, stream, b"")).admitted
    for _ in range(5):
        clock.now += 8_000
        await state.renew([(key, stream)])
        assert not (await state.admit(key, ask(limits=limits), b"")).admitted


async def test_reservation_then_settlement(store: tuple[StateStore, Clock]) -> None:
    state, _ = store
    key = prefix()
    day = BudgetLine(Period.DAY, 1000, "day:1", ttl_ms=86_400_000)
    request = ask(budgets=(day,), prompt_estimate=100, default_cap=500)
    missing = await state.admit(key, request, b"")
    assert missing.missing == (day,)
    await state.seed(key, "day:1", 300, day.ttl_ms)
    await state.seed(key, "day:1", 999, day.ttl_ms)  # a known counter wins
    admitted = await state.admit(key, request, b"")
    assert (admitted.cap, admitted.reserved) == (500, 600)
    assert admitted.budget_states[0].used == 900
    # The default cap is clipped to what is left; an explicit cap must fit.
    clipped = await state.admit(key, ask(budgets=(day,), prompt_estimate=20), b"")
    assert (clipped.cap, clipped.reserved) == (80, 100)
    refused = await state.admit(key, ask(budgets=(day,), requested_cap=10), b"")
    assert (refused.reason, refused.blocking) == ("budget", Period.DAY)
    assert await state.settle(key, request, 250, b"") is Settled.SETTLED
    after = await state.admit(key, ask(budgets=(day,), requested_cap=340, prompt_estimate=10), b"")
    assert after.admitted  # 1000 - (300 + 250 + 100) = 350 left
    assert after.budget_states[0].used == 1000


async def test_token_window_counts_reservations_and_corrects_them(
    store: tuple[StateStore, Clock],
) -> None:
    state, _ = store
    key = prefix()
    limits = Limits(tpm=1000)
    big = ask(limits=limits, prompt_estimate=100, requested_cap=900)
    assert (await state.admit(key, big, b"")).reserved == 1000
    blocked = await state.admit(key, ask(limits=limits, prompt_estimate=1), b"")
    assert (blocked.reason, blocked.retry_after_ms) == ("tpm", 60_000)
    await state.settle(key, big, 150, b"")
    freed = await state.admit(key, ask(limits=limits, prompt_estimate=1, requested_cap=1), b"")
    assert freed.admitted
    assert freed.tokens is not None
    assert freed.tokens.used == 150


async def test_refusals_report_what_stands_and_embeddings_reserve_no_cap(
    store: tuple[StateStore, Clock],
) -> None:
    state, _ = store
    key = prefix()
    day = BudgetLine(Period.DAY, 500, "day:r", ttl_ms=86_400_000)
    await state.seed(key, "day:r", 100, day.ttl_ms)
    limits = Limits(rpm=10, tpm=5000, concurrent=1)
    embed = ask(limits=limits, budgets=(day,), prompt_estimate=30, generates=False)
    taken = await state.admit(key, embed, b"")
    assert (taken.cap, taken.reserved) == (None, 30)  # the prompt alone
    refused = await state.admit(key, ask(limits=limits, budgets=(day,)), b"")
    assert refused.reason == "concurrency"
    assert refused.requests is not None
    assert refused.requests.remaining == 9  # this one was not counted
    assert refused.tokens is not None
    assert refused.tokens.remaining == 5000 - 30
    assert [s.used for s in refused.budget_states] == [130]
    await state.settle(key, embed, 20, b"")
    too_big = await state.admit(key, ask(limits=limits, budgets=(day,), requested_cap=900), b"")
    assert (too_big.reason, too_big.blocking) == ("budget", Period.DAY)
    assert [s.used for s in too_big.budget_states] == [120]
    listing = await state.admit(key, ask(limits=limits, budgets=(day,), inference=False), b"")
    assert listing.admitted
    assert [s.remaining for s in listing.budget_states] == [380]
    assert listing.tokens is not None


async def test_a_fan_out_counts_as_its_calls(store: tuple[StateStore, Clock]) -> None:
    """n choices: n requests towards rpm, n concurrency slots, n completion caps; a
    fan-out that does not fit is refused whole, leaving nothing counted or held."""
    state, clock = store
    key = prefix()
    day = BudgetLine(Period.DAY, 10_000, "day:f", ttl_ms=86_400_000)
    await state.seed(key, "day:f", 0, day.ttl_ms)
    limits = Limits(rpm=5, concurrent=4)
    fan = ask(limits=limits, budgets=(day,), prompt_estimate=30, requested_cap=100, count=3)
    taken = await state.admit(key, fan, b"row")
    assert (taken.admitted, taken.cap, taken.reserved) == (True, 100, 330)
    assert taken.requests is not None
    assert taken.requests.remaining == 2  # 5 - 3
    assert [s.used for s in taken.budget_states] == [330]
    # One slot and two requests are left: a fan-out of two fits neither the slots...
    two = ask(limits=limits, budgets=(day,), prompt_estimate=20, requested_cap=10, count=2)
    refused = await state.admit(key, two, b"row")
    assert (refused.admitted, refused.reason) == (False, "concurrency")
    assert refused.requests is not None
    assert refused.requests.remaining == 2  # refused after the window: not counted
    assert [s.used for s in refused.budget_states] == [330]  # nothing reserved
    # ...while one call fits both.
    assert (await state.admit(key, ask(limits=limits, budgets=(day,), count=1), b"row")).admitted
    assert await state.settle(key, fan, 90, b"row") is Settled.SETTLED  # all three calls
    probe = await state.admit(key, ask(limits=limits, inference=False, budgets=(day,)), b"")
    assert probe.budget_states[0].used == 90 + 4096  # the fan-out's use + the single one
    # The window holds 3 + 1 + the probe: a fan-out of two must wait for the first three.
    late = await state.admit(key, ask(limits=limits, count=2), b"row")
    assert (late.reason, late.retry_after_ms) == ("rpm", 60_000)
    clock.now += 60_000
    assert (await state.admit(key, ask(limits=limits, count=2), b"row")).admitted


async def test_a_fan_out_beyond_a_limit_never_fits(store: tuple[StateStore, Clock]) -> None:
    state, _ = store
    key = prefix()
    too_many = await state.admit(key, ask(limits=Limits(rpm=2), count=3), b"row")
    assert (too_many.reason, too_many.retry_after_ms) == ("rpm", 60_000)
    too_wide = await state.admit(key, ask(limits=Limits(concurrent=2), count=3), b"row")
    assert (too_wide.reason, too_wide.retry_after_ms) == ("concurrency", 1000)
    # Each call's cap comes from its share of what the budget has left.
    day = BudgetLine(Period.DAY, 1000, "day:s", ttl_ms=86_400_000)
    await state.seed(key, "day:s", 100, day.ttl_ms)
    shared = await state.admit(key, ask(budgets=(day,), prompt_estimate=60, count=4), b"row")
    assert (shared.cap, shared.reserved) == (210, 900)  # (900 - 60) // 4 each
    refused = await state.admit(key, ask(budgets=(day,), prompt_estimate=0, count=2), b"row")
    assert (refused.reason, refused.blocking) == ("budget", Period.DAY)


async def test_renewal_keeps_every_slot_of_a_fan_out(store: tuple[StateStore, Clock]) -> None:
    state, clock = store
    key = prefix()
    limits = Limits(concurrent=3)
    fan = ask(limits=limits, lease_ms=10_000, count=3)
    assert (await state.admit(key, fan, b"row")).admitted
    for _ in range(3):
        clock.now += 8_000
        await state.renew([(key, fan)])
        assert not (await state.admit(key, ask(limits=limits), b"row")).admitted
    assert await state.settle(key, fan, 0, b"row") is Settled.SETTLED
    assert (await state.admit(key, ask(limits=limits, count=3), b"row")).admitted


async def test_redis_keys_share_one_hash_tag() -> None:
    names = key_names("nz_abcdefghi")
    assert all("{nz_abcdefghi}" in name for name in names)


# -- the stateful comparison -----------------------------------------------------

limits_strategy = st.builds(
    Limits,
    rpm=st.none() | st.integers(1, 4),
    tpm=st.none() | st.integers(1, 600),
    concurrent=st.none() | st.integers(1, 3),
)


class RedisStoreMatchesKeyState(RuleBasedStateMachine):
    """Random admissions, settlements, renewals and waits, on the Lua scripts and on
    the algorithm they implement."""

    admitted = Bundle("admitted")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.store, self._close = make_store("redis", self.clock)
        self.model = KeyState()
        self.prefix = prefix()
        self.limits = Limits()
        self.budgets: tuple[BudgetLine, ...] = ()

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    @initialize(
        limits=limits_strategy,
        budgets=st.lists(
            st.tuples(st.sampled_from(list(Period)), st.integers(0, 3000)),
            max_size=3,
            unique_by=lambda pair: pair[0],
        ),
    )
    def configure(self, limits: Limits, budgets: list[tuple[Period, int]]) -> None:
        self.limits = limits
        self.budgets = tuple(BudgetLine(p, n, f"{p.value}:0", 3_600_000) for p, n in budgets)

    @rule(
        target=admitted,
        inference=st.booleans(),
        estimate=st.integers(0, 400),
        cap=st.none() | st.integers(1, 500),
        default_cap=st.integers(1, 800),
        lease=st.integers(1_000, 40_000),
        seed=st.integers(0, 3000),
        generates=st.booleans(),
        count=st.integers(1, 4),
    )
    def admit(
        self,
        inference: bool,
        estimate: int,
        cap: int | None,
        default_cap: int,
        lease: int,
        seed: int,
        generates: bool,
        count: int,
    ) -> Ask:
        request = Ask(
            uuid.uuid4().hex,
            inference,
            self.limits,
            self.budgets,
            estimate,
            cap,
            default_cap,
            lease,
            generates,
            count if inference and generates else 1,
        )
        expected = self.model.admit(request, self.clock.now)
        got = self.run(self.store.admit(self.prefix, request, b"row"))
        assert got == expected
        if expected.missing:
            for line in expected.missing:
                self.model.seed(line.counter, seed)
                self.run(self.store.seed(self.prefix, line.counter, seed, line.ttl_ms))
            expected = self.model.admit(request, self.clock.now)
            got = self.run(self.store.admit(self.prefix, request, b"row"))
            assert got == expected
        return request

    @rule(request=consumes(admitted), tokens=st.integers(0, 900))
    def settle(self, request: Ask, tokens: int) -> None:
        expected = self.model.settle(
            request.rid, tokens, self.clock.now, counts_tokens=request.limits.tpm is not None
        )
        got = self.run(self.store.settle(self.prefix, request, tokens, b"row"))
        assert (got is Settled.SETTLED) == expected

    @rule(request=admitted)
    def renew(self, request: Ask) -> None:
        self.model.renew(request.rid, self.clock.now, request.lease_ms)
        self.run(self.store.renew([(self.prefix, request)]))

    @rule(ms=st.sampled_from([1, 999, 1_000, 9_999, 10_000, 30_000, 59_999, 60_000, 61_000]))
    def wait(self, ms: int) -> None:
        self.clock.now += ms

    def teardown(self) -> None:
        self.run(self._close())
        self.loop.close()


class MemoryStoreKeepsTheRules(RuleBasedStateMachine):
    """The in-process store under random traffic, checked against the test's own
    bookkeeping: never more than ``rpm`` admissions in any 60 s, never more than
    ``concurrent`` live leases, and settlements within their reservation never take a
    budget counter past its limit (SPEC §4.4's invariant)."""

    open_requests = Bundle("open_requests")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.store = MemoryStore(clock=self.clock)
        self.prefix = prefix()
        self.limits = Limits()
        self.budgets: tuple[BudgetLine, ...] = ()
        self.counted: list[int] = []  # admission times that count towards rpm
        self.leases: dict[str, tuple[int, int]] = {}  # rid → (expiry, slots), as the test
        # understands them
        self.reserved: dict[str, int] = {}
        self.seeded: dict[str, int] = {}
        self.expected: dict[str, int] = {}  # counter → seed + reservations + corrections

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    @initialize(
        limits=limits_strategy,
        budgets=st.lists(
            st.tuples(st.sampled_from(list(Period)), st.integers(0, 3000)),
            max_size=3,
            unique_by=lambda pair: pair[0],
        ),
        seed=st.integers(0, 3000),
    )
    def configure(self, limits: Limits, budgets: list[tuple[Period, int]], seed: int) -> None:
        self.limits = limits
        self.budgets = tuple(BudgetLine(p, n, f"{p.value}:0", 3_600_000) for p, n in budgets)
        for line in self.budgets:
            self.seeded[line.counter] = self.expected[line.counter] = seed
            self.run(self.store.seed(self.prefix, line.counter, seed, line.ttl_ms))

    @rule(
        target=open_requests,
        inference=st.booleans(),
        estimate=st.integers(0, 400),
        cap=st.none() | st.integers(1, 500),
        lease=st.integers(1_000, 40_000),
        generates=st.booleans(),
        count=st.integers(1, 4),
    )
    def admit(
        self,
        inference: bool,
        estimate: int,
        cap: int | None,
        lease: int,
        generates: bool,
        count: int,
    ) -> Ask:
        now = self.clock.now
        count = count if inference and generates else 1
        request = Ask(
            uuid.uuid4().hex,
            inference,
            self.limits,
            self.budgets,
            estimate,
            cap,
            300,
            lease,
            generates,
            count,
        )
        live = sum(slots for expiry, slots in self.leases.values() if expiry > now)
        decision = self.run(self.store.admit(self.prefix, request, b""))
        if not decision.admitted:
            return request
        if self.limits.rpm is not None:
            self.counted.extend([now] * count)
        if inference:
            if self.limits.concurrent is not None:
                assert live + count <= self.limits.concurrent
            if decision.reserved and generates:
                # Each call is capped alike, and the reservation holds every cap.
                assert decision.cap is not None
                assert decision.reserved == estimate + count * decision.cap
            self.leases[request.rid] = (now + lease, count)
            self.reserved[request.rid] = decision.reserved
            for line in self.budgets:
                self.expected[line.counter] += decision.reserved
            for state, line in zip(decision.budget_states, self.budgets, strict=True):
                # Admitted only where the reservation fits (or it reserves nothing).
                assert state.used <= max(line.limit, self.seeded[line.counter])
        return request

    @rule(request=consumes(open_requests), share=st.floats(0, 1))
    def settle(self, request: Ask, share: float) -> None:
        reserved = self.reserved.pop(request.rid, None)
        tokens = int((reserved or 0) * share)  # within the reservation
        self.leases.pop(request.rid, None)
        self.run(self.store.settle(self.prefix, request, tokens, b""))
        if reserved is not None:
            for line in self.budgets:
                self.expected[line.counter] += tokens - reserved

    @rule(request=open_requests)
    def renew(self, request: Ask) -> None:
        now = self.clock.now
        expiry, slots = self.leases.get(request.rid, (now, 1))
        if expiry > now:
            self.leases[request.rid] = (now + request.lease_ms, slots)
        self.run(self.store.renew([(self.prefix, request)]))

    @rule(ms=st.sampled_from([1, 999, 1_000, 9_999, 10_000, 30_000, 59_999, 60_000, 61_000]))
    def wait(self, ms: int) -> None:
        self.clock.now += ms

    @invariant()
    def never_more_than_rpm_in_a_window(self) -> None:
        if self.limits.rpm is not None:
            recent = [t for t in self.counted if t > self.clock.now - 60_000]
            assert len(recent) <= self.limits.rpm

    @invariant()
    def budgets_hold(self) -> None:
        listing = Ask("probe", False, self.limits, self.budgets)
        probe = self.run(self.store.admit(self.prefix, listing, b""))
        if probe.reason == "rpm":
            return  # refused before the budgets were read
        for state, line in zip(probe.budget_states, self.budgets, strict=True):
            assert state.used <= max(line.limit, self.seeded[line.counter])
            assert state.used == self.expected[line.counter]  # settled exactly
        if self.limits.rpm is not None and probe.admitted:
            self.counted.append(self.clock.now)  # the probe counted towards rpm too

    def teardown(self) -> None:
        self.loop.close()


_SETTINGS = settings(
    max_examples=int(os.environ.get("NZ_STATEFUL_EXAMPLES", "60")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMemoryStore = MemoryStoreKeepsTheRules.TestCase
TestMemoryStore.settings = _SETTINGS
TestRedisStore = RedisStoreMatchesKeyState.TestCase
TestRedisStore.settings = _SETTINGS
