"""Settlements Redis missed (SPEC §4.4, §4.8): replayed when it answers again, with the
audit row recorded to match what the counters say, whatever Redis did meanwhile (ran
the command late, lost its state, let the lease run out)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.budgets import Period
from nz_core.limiter import Ask, BudgetLine
from nz_core.limits import Limits
from nz_proxy.admission.backlog import Backlog, Gate, Owed
from nz_proxy.admission.stores import Settled
from nz_proxy.admission.stores.redis import RedisStore
from nz_proxy.audit import AuditWriter, decode_row, encode_row
from nz_proxy.maintenance import reap_once
from tests.proxy.test_journal import UTC_ZONE, key, row, store, written
from tests.proxy.test_state import Clock

__all__ = ["key", "store"]  # fixtures, shared with the journal tests

DAY = BudgetLine(Period.DAY, 100_000, "day:s", ttl_ms=86_400_000)


@pytest.fixture
async def dead() -> AsyncIterator[RedisStore]:
    """A store whose Redis is not there (nothing listens on the port)."""
    client = aioredis.Redis(port=1, retry=Retry(NoBackoff(), 0))
    try:
        yield RedisStore(client)
    finally:
        await client.aclose()


def ask(rid: str, lease_ms: int = 30_000) -> Ask:
    return Ask(rid, True, Limits(concurrent=4), (DAY,), 40, 60, lease_ms=lease_ms)


async def counter(redis_store: RedisStore, prefix: str) -> int:
    """The live day counter, read through an admission of nothing."""
    probe = Ask(uuid.uuid4().hex, False, Limits(), (DAY,), 0)
    return (await redis_store.admit(prefix, probe, b"")).budget_states[0].used


async def admitted(redis_store: RedisStore, key_id: int, prefix: str, rid: str) -> Ask:
    request = ask(rid)
    decision = await redis_store.admit(prefix, request, encode_row(row(key_id, prefix, rid)))
    assert decision.admitted
    assert decision.reserved == 100
    return request


async def test_a_missed_settlement_waits_then_settles_with_its_row(
    store: tuple[RedisStore, Clock], key: tuple[AsyncEngine, int, str], dead: RedisStore
) -> None:
    live, clock = store
    engine, key_id, prefix = key
    await live.seed(prefix, DAY.counter, 0, DAY.ttl_ms)
    rid = uuid.uuid4().hex
    request = await admitted(live, key_id, prefix, rid)
    final = encode_row(row(key_id, prefix, rid, status=200, tokens_out=12))
    audit = AuditWriter(engine, live, UTC_ZONE, capacity=100)
    backlog = Backlog(dead, audit, Gate())
    with pytest.raises(aioredis.RedisError):
        await dead.settle(prefix, request, 52, final)
    backlog.add(Owed(prefix, request, 52, 100, final, clock.now))
    assert await backlog.replay_once() == 0  # Redis still away: nothing recorded
    assert len(backlog) == 1
    assert audit.waiting == 0
    assert await counter(live, prefix) == 100  # the reservation holds meanwhile
    backlog.store = live  # Redis is back
    assert await backlog.replay_once() == 1
    assert len(backlog) == 0
    assert audit.waiting == 1
    assert await audit.flush()
    rows, ledger = await written(engine, prefix)
    assert rows == [(200, 40, 12)]
    assert ledger == 52 == await counter(live, prefix)
    assert await live.reap(grace_ms=0) == []  # the journal entry was released


async def test_a_settlement_redis_ran_late_is_not_applied_twice(
    store: tuple[RedisStore, Clock], key: tuple[AsyncEngine, int, str]
) -> None:
    live, clock = store
    engine, key_id, prefix = key
    await live.seed(prefix, DAY.counter, 0, DAY.ttl_ms)
    rid = uuid.uuid4().hex
    request = await admitted(live, key_id, prefix, rid)
    final = encode_row(row(key_id, prefix, rid, status=200, tokens_out=12))
    # The caller timed out, but a frozen Redis ran the command when it thawed.
    assert await live.settle(prefix, request, 52, final) is Settled.SETTLED
    audit = AuditWriter(engine, live, UTC_ZONE, capacity=100)
    backlog = Backlog(live, audit, Gate())
    backlog.add(Owed(prefix, request, 52, 100, final, clock.now))
    assert await backlog.replay_once() == 1
    assert await audit.flush()
    rows, ledger = await written(engine, prefix)
    assert rows == [(200, 40, 12)]
    assert ledger == 52 == await counter(live, prefix)


async def test_a_replay_after_the_lease_ran_out_is_audited_at_the_reservation(
    store: tuple[RedisStore, Clock], key: tuple[AsyncEngine, int, str]
) -> None:
    live, clock = store
    engine, key_id, prefix = key
    await live.seed(prefix, DAY.counter, 0, DAY.ttl_ms)
    rid = uuid.uuid4().hex
    request = await admitted(live, key_id, prefix, rid)
    clock.now += request.lease_ms + 1
    reaper = AuditWriter(engine, live, UTC_ZONE, capacity=100)
    assert await reap_once(live, reaper, 60_000) == 1
    audit = AuditWriter(engine, live, UTC_ZONE, capacity=100)
    backlog = Backlog(live, audit, Gate())
    final = encode_row(row(key_id, prefix, rid, status=200, tokens_out=12))
    backlog.add(Owed(prefix, request, 52, 100, final, clock.now))
    assert await backlog.replay_once() == 1
    for writer in (audit, reaper):  # whichever lands first, they agree
        assert await writer.flush()
    rows, ledger = await written(engine, prefix)
    assert [(tokens_in, tokens_out) for _, tokens_in, tokens_out in rows] == [(40, 60)]
    assert ledger == 100 == await counter(live, prefix)


async def test_a_lost_reservation_adds_its_tokens_to_a_counter_rebuilt_after_it(
    store: tuple[RedisStore, Clock], key: tuple[AsyncEngine, int, str]
) -> None:
    live, clock = store
    _, key_id, prefix = key
    await live.seed(prefix, DAY.counter, 500, DAY.ttl_ms)
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    admitted_at = clock.now
    requests = [await admitted(live, key_id, prefix, rid) for rid in (first, second)]
    await live.redis.flushdb()  # Redis restarted empty under two running requests
    clock.now += 1_000
    await live.seed(prefix, DAY.counter, 500, DAY.ttl_ms)  # rebuilt from the ledger
    assert await live.settle(prefix, requests[0], 52, b"", admitted_at) is Settled.UNKNOWN
    assert await counter(live, prefix) == 552  # the rebuild could not have counted it
    # Without its admission time a settlement cannot tell, and changes nothing.
    assert await live.settle(prefix, requests[1], 30, b"") is Settled.UNKNOWN
    assert await counter(live, prefix) == 552


async def test_a_counter_rebuilt_before_admission_is_not_added_to_again(
    store: tuple[RedisStore, Clock], key: tuple[AsyncEngine, int, str]
) -> None:
    live, clock = store
    _, key_id, prefix = key
    await live.seed(prefix, DAY.counter, 0, DAY.ttl_ms)
    clock.now += 1_000
    rid = uuid.uuid4().hex
    request = await admitted(live, key_id, prefix, rid)
    assert await live.settle(prefix, request, 52, b"", clock.now) is Settled.SETTLED
    # Its entry is gone (released); a stray second settlement must not count it twice.
    assert await live.settle(prefix, request, 52, b"", clock.now) is Settled.UNKNOWN
    assert await counter(live, prefix) == 52


async def test_a_cancelled_admission_that_ran_late_frees_its_reservation(
    store: tuple[RedisStore, Clock], key: tuple[AsyncEngine, int, str]
) -> None:
    live, clock = store
    engine, key_id, prefix = key
    await live.seed(prefix, DAY.counter, 0, DAY.ttl_ms)
    rid = uuid.uuid4().hex
    request = await admitted(live, key_id, prefix, rid)  # ran after the client gave up
    audit = AuditWriter(engine, live, UTC_ZONE, capacity=100)
    backlog = Backlog(live, audit, Gate())
    backlog.cancel(prefix, request, clock.now)
    assert await backlog.replay_once() == 1
    assert audit.waiting == 0  # its 503 was audited when it was answered
    assert await counter(live, prefix) == 0
    assert await live.reap(grace_ms=0) == []  # no lease, no journal entry left
    lease_key = f"gw:{{{prefix}}}:lease"
    assert await live.redis.zcard(lease_key) == 0


async def test_a_rebuild_waits_for_settlements_in_flight_and_holds_new_ones() -> None:
    gate = Gate()
    events: list[str] = []
    settling = asyncio.Event()
    finish = asyncio.Event()

    async def settle(name: str, hold: bool) -> None:
        async with gate:
            events.append(f"{name} in")
            if hold:
                settling.set()
                await finish.wait()
            events.append(f"{name} out")

    async def rebuild() -> None:
        async with gate.rebuild():
            events.append("rebuild in")
            await asyncio.sleep(0.01)
            events.append("rebuild out")

    first = asyncio.create_task(settle("first", hold=True))
    await settling.wait()
    rebuilding = asyncio.create_task(rebuild())
    await asyncio.sleep(0.01)
    late = asyncio.create_task(settle("late", hold=False))
    await asyncio.sleep(0.01)
    assert events == ["first in"]  # the rebuild waits, and so does the late settlement
    finish.set()
    await asyncio.gather(first, rebuilding, late)
    assert events == ["first in", "first out", "rebuild in", "rebuild out", "late in", "late out"]


async def test_a_rebuild_waits_for_a_row_another_process_settled_after_redis_lost_it(
    store: tuple[RedisStore, Clock], key: tuple[AsyncEngine, int, str]
) -> None:
    live, clock = store
    engine, key_id, prefix = key
    await live.seed(prefix, DAY.counter, 0, DAY.ttl_ms)
    rid = uuid.uuid4().hex
    request = await admitted(live, key_id, prefix, rid)
    await live.redis.flushdb()  # Redis restarted empty under a running request
    final = encode_row(row(key_id, prefix, rid, status=200, tokens_out=12))
    # Process A settles it: the reservation is gone, so its row goes to A's buffer.
    assert await live.settle(prefix, request, 52, final, clock.now) is Settled.UNKNOWN
    audit = AuditWriter(engine, live, UTC_ZONE, capacity=100)
    audit.record(decode_row(final), release=True)
    # Process B would rebuild from a ledger that does not hold the row yet: it waits.
    assert await live.ledger_epoch(prefix) is None
    assert await audit.flush()
    epoch = await live.ledger_epoch(prefix)
    assert epoch is not None
    _, ledger = await written(engine, prefix)
    assert ledger == 52
    assert await live.seed(prefix, DAY.counter, ledger, DAY.ttl_ms, epoch)
    assert await counter(live, prefix) == 52


async def test_a_rebuild_that_read_the_ledger_before_a_marked_row_landed_reads_again(
    store: tuple[RedisStore, Clock], key: tuple[AsyncEngine, int, str]
) -> None:
    live, clock = store
    engine, key_id, prefix = key
    await live.seed(prefix, DAY.counter, 0, DAY.ttl_ms)
    rid = uuid.uuid4().hex
    request = await admitted(live, key_id, prefix, rid)
    await live.redis.flushdb()
    stale = await live.ledger_epoch(prefix)  # B reads the epoch, then the ledger (0)...
    assert stale is not None
    final = encode_row(row(key_id, prefix, rid, status=200, tokens_out=12))
    assert await live.settle(prefix, request, 52, final, clock.now) is Settled.UNKNOWN
    audit = AuditWriter(engine, live, UTC_ZONE, capacity=100)
    audit.record(decode_row(final), release=True)
    assert await audit.flush()  # ...while A's row lands: B's reading is stale.
    assert not await live.seed(prefix, DAY.counter, 0, DAY.ttl_ms, stale)
    fresh = await live.ledger_epoch(prefix)
    assert fresh is not None
    assert fresh != stale
    assert await live.seed(prefix, DAY.counter, 52, DAY.ttl_ms, fresh)
    assert await counter(live, prefix) == 52
