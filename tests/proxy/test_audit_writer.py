"""The audit writer against rows the database refuses (SPEC §3, poison strings; §4.8).

A refused row is isolated by bisection and stored sanitised, a row refused even so is
logged once and dropped, the rest of its batch lands, the ledger stays equal to the
audit tokens, a drain at shutdown gets past it, and a backlog that stops draining while
the database answers makes ``/readyz`` say so. Real PostgreSQL and SQLite throughout.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from nz_core import admin
from nz_core.budgets import Period, period_bounds
from nz_core.database import connect, create_engine
from nz_core.errors import DatabaseUnreachable
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.ledger import record
from nz_core.migrations import upgrade
from nz_core.schema import audit_log, budget_usage, prompt_log
from nz_proxy import audit as audit_module
from nz_proxy.admission.stores.memory import MemoryStore
from nz_proxy.app import build_gateway
from nz_proxy.audit import AuditRow, AuditWriter, PromptRecord
from nz_proxy.health import readiness
from nz_proxy.promptlog import Transcript
from nz_proxy.settings import load_settings
from nz_proxy.supervisor import Job, Supervisor
from tests import services
from tests.processes import MockProcess

UTC_ZONE = ZoneInfo("UTC")
# Refused by both databases: PostgreSQL takes no NUL in text, and neither driver can
# encode a lone surrogate as UTF-8 (SQLite would store the NUL).
POISON = "x\x00y\udc80z\x1b[31m"


@dataclass(frozen=True)
class Key:
    engine: AsyncEngine
    key_id: int
    prefix: str
    tenant_id: int


async def a_key(engine: AsyncEngine) -> Key:
    tenant = f"writer-{uuid.uuid4().hex[:8]}"
    created = await admin.create_tenant(engine, tenant)
    key = (await admin.create_key(engine, tenant, "k", hasher=KeyHasher(TEST_HASH_PROFILE))).record
    return Key(engine, key.id, key.prefix, created.id)


def a_row(key: Key | None, n: int, **fields: Any) -> AuditRow:
    values: dict[str, Any] = {
        "id": uuid.uuid4().bytes,
        "request_id": f"req-{n}-{uuid.uuid4().hex[:8]}",
        "ts_us": int(datetime.now(UTC).timestamp() * 1_000_000),
        "tenant_id": key.tenant_id if key else None,
        "key_id": key.key_id if key else None,
        "key_prefix": key.prefix if key else None,
        "endpoint": "/api/chat",
        "model": "llama3.2:latest",
        "tokens_in": n,
        "tokens_out": 2 * n,
        "status": 200,
        "latency_ms": 5,
        "ttft_ms": 1,
        "client_ip": "10.0.0.1",
        "stream": False,
    }
    return AuditRow(**(values | fields))


def a_writer(engine: AsyncEngine, **options: Any) -> AuditWriter:
    return AuditWriter(engine, MemoryStore(), UTC_ZONE, capacity=100_000, **options)


async def stored(engine: AsyncEngine, ids: list[bytes]) -> dict[bytes, sa.Row[Any]]:
    async with connect(engine) as conn:
        rows = (
            await conn.execute(
                sa.select(audit_log).where(audit_log.c.id.in_([uuid.UUID(bytes=i) for i in ids]))
            )
        ).all()
    return {row.id.bytes: row for row in rows}


async def books(key: Key) -> tuple[int, int]:
    """(tokens in the key's audit rows, tokens in its all-time ledger line)."""
    async with connect(key.engine) as conn:
        audited = await conn.scalar(
            sa.select(
                sa.func.coalesce(sa.func.sum(audit_log.c.tokens_in + audit_log.c.tokens_out), 0)
            ).where(audit_log.c.key_prefix == key.prefix)
        )
        ledger = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(budget_usage.c.tokens), 0)).where(
                budget_usage.c.key_id == key.key_id, budget_usage.c.period == "total"
            )
        )
    return int(audited), int(ledger)


@contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    """The writer's log lines (a fresh logger: a configured one may be cached)."""
    with pytest.MonkeyPatch.context() as patch, capture_logs() as lines:
        patch.setattr(audit_module, "log", structlog.get_logger("nz_proxy.audit"))
        yield lines


@pytest.fixture(params=["postgres", "sqlite"])
async def scratch(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database of this test's own, to add a constraint or hold a lock on."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}"
        await asyncio.to_thread(upgrade, url)
        yield url
        return
    name = await services.create_database("writer")
    try:
        await asyncio.to_thread(upgrade, services.pg_url(name))
        yield services.pg_url(name)
    finally:
        await services.drop_database(name)


async def test_a_refused_row_is_isolated_and_stored_sanitised(engine: AsyncEngine) -> None:
    key = await a_key(engine)
    writer = a_writer(engine, batch=64)
    poisoned = {
        3: {"model": POISON},
        64: {"endpoint": "/x" + POISON},
        100: {"client_ip": POISON, "model": "m" + "\x00" * 10_000},
        132: {"request_id": "rid" + POISON},
    }
    rows = [a_row(key, n, **poisoned.get(n, {})) for n in range(133)]
    for row in rows:
        writer.record(row)
    flushes = 0
    while writer.waiting:
        assert await writer.flush()
        flushes += 1
    assert flushes == 3
    found = await stored(engine, [row.id for row in rows])
    assert len(found) == len(rows)  # every row of every batch landed
    for n, fields in poisoned.items():
        landed = found[rows[n].id]
        for name in fields:
            value = getattr(landed, name)
            assert "\ufffd" in value
            assert "\x00" not in value
            assert not any("\ud800" <= char <= "\udfff" for char in value)
            assert len(value) <= 200
        assert (landed.tokens_in, landed.tokens_out) == (n, 2 * n)
    assert found[rows[5].id].model == "llama3.2:latest"  # the others as they were
    audited, ledger = await books(key)
    assert audited == ledger == sum(3 * n for n in range(133))
    assert (writer.written, writer.lost) == (133, 0)


async def test_a_row_refused_even_sanitised_is_logged_once_and_dropped(scratch: str) -> None:
    engine = create_engine(scratch)
    try:
        key = await a_key(engine)
        # A rule the row breaks whatever its strings: no sanitising can save it.
        async with connect(engine) as conn:
            if engine.dialect.name == "postgresql":
                await conn.execute(
                    sa.text(
                        "ALTER TABLE gateway.audit_log"
                        " ADD CONSTRAINT no_teapots CHECK (status <> 418)"
                    )
                )
            else:
                await conn.execute(
                    sa.text(
                        "CREATE TRIGGER no_teapots BEFORE INSERT ON audit_log"
                        " WHEN NEW.status = 418 BEGIN SELECT RAISE(ABORT, 'no teapots'); END"
                    )
                )
        writer = a_writer(engine, batch=50)
        rows = [a_row(key, n, status=418 if n == 17 else 200) for n in range(50)]
        teapot = rows[17]
        for row in rows:
            writer.record(row)
        with captured() as lines:
            assert await writer.flush()
            later = a_row(key, 99)
            writer.record(later)
            assert await writer.flush()  # the writer moved on: nothing retried, nothing stuck
        assert writer.waiting == 0
        found = await stored(engine, [row.id for row in [*rows, later]])
        assert set(found) == {row.id for row in [*rows, later]} - {teapot.id}
        lost = [line for line in lines if line["event"] == "audit_row_lost"]
        assert [line["request_id"] for line in lost] == [teapot.request_id]
        assert "no_teapots" in lost[0]["reason"] or "no teapots" in lost[0]["reason"]
        assert (writer.written, writer.lost) == (50, 1)
        audited, ledger = await books(key)
        assert audited == ledger == sum(3 * n for n in range(50) if n != 17) + 3 * 99
    finally:
        await engine.dispose()


async def test_the_running_writer_gets_past_a_poison_row(engine: AsyncEngine) -> None:
    key = await a_key(engine)
    writer = a_writer(engine, interval_s=0.05)
    supervisor = Supervisor()
    supervisor.start(Job("audit", writer.step, wake=writer.wake))
    try:
        rows = [a_row(key, n, model=POISON if n == 2 else "m") for n in range(5)]
        for row in rows:
            writer.record(row)
        for _ in range(100):
            if not writer.waiting:
                break
            await asyncio.sleep(0.05)
        assert writer.waiting == 0
        later = a_row(key, 7)
        writer.record(later)
        for _ in range(100):
            if not writer.waiting:
                break
            await asyncio.sleep(0.05)
        assert len(await stored(engine, [row.id for row in [*rows, later]])) == 6
    finally:
        await supervisor.stop()


@pytest.mark.parametrize("scratch", ["postgres"], indirect=True)
async def test_an_error_that_is_not_about_the_rows_keeps_them(scratch: str) -> None:
    """Only a refusal of the values is split and, at worst, dropped. Any other error
    (here a trigger raising) keeps the rows for later, even halfway through a split:
    the parts written leave the buffer, the rest stays in order, nothing is lost."""
    engine = create_engine(scratch)
    try:
        key = await a_key(engine)
        async with connect(engine) as conn:
            await conn.execute(
                sa.text(
                    "CREATE FUNCTION gateway.frozen() RETURNS trigger AS $$ BEGIN"
                    " IF NEW.status = 599 THEN RAISE EXCEPTION 'frozen'; END IF;"
                    " RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER frozen BEFORE INSERT ON gateway.audit_log"
                    " FOR EACH ROW EXECUTE FUNCTION gateway.frozen()"
                )
            )
        writer = a_writer(engine, batch=10)
        # The NUL row's batch is refused first (the database reads the whole column),
        # so the split starts; the half holding the 599 row then meets the trigger.
        rows = [
            a_row(key, n, model=POISON if n == 0 else "m", status=599 if n == 9 else 200)
            for n in range(10)
        ]
        for row in rows:
            writer.record(row)
        assert not await writer.flush()
        assert set(await stored(engine, [row.id for row in rows])) == {r.id for r in rows[:5]}
        # Left in the buffer: exactly rows 5..9, so a counter rebuilt from ledger plus
        # buffer counts each row once.
        total = period_bounds(Period.TOTAL, rows[0].ts, UTC_ZONE)[0]
        assert writer.pending_tokens(key.key_id, Period.TOTAL, total) == sum(
            3 * n for n in range(5, 10)
        )
        assert writer.waiting == 5
        assert (writer.written, writer.lost) == (5, 0)
        assert not await writer.flush()  # still failing: kept, never dropped
        assert (writer.waiting, writer.lost) == (5, 0)
        async with connect(engine) as conn:
            await conn.execute(sa.text("DROP TRIGGER frozen ON gateway.audit_log"))
        assert await writer.flush()
        assert len(await stored(engine, [row.id for row in rows])) == 10
        audited, ledger = await books(key)
        assert audited == ledger == sum(3 * n for n in range(10))
    finally:
        await engine.dispose()


async def test_prompts_with_what_no_database_stores_are_kept_sanitised(
    engine: AsyncEngine,
) -> None:
    key = await a_key(engine)
    writer = a_writer(engine)
    rows = [a_row(key, n) for n in range(10)]
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    prompts = [
        PromptRecord(
            id=row.id,
            request_id=row.request_id,
            key_id=key.key_id,
            ts_us=now_us,
            request_body='{"prompt": "hi"}',
            response_text=f"answer {n}\nline two" + ("\x00\udc80" if n in (2, 7) else ""),
            retention_days=1,
        )
        for n, row in enumerate(rows)
    ]
    for row, prompt in zip(rows, prompts, strict=True):
        writer.record(row)
        writer.record_prompt(prompt)
    assert await writer.flush()
    assert len(await stored(engine, [row.id for row in rows])) == 10
    async with connect(engine) as conn:
        texts = dict(
            (
                await conn.execute(
                    sa.select(prompt_log.c.id, prompt_log.c.response_text).where(
                        prompt_log.c.key_id == key.key_id
                    )
                )
            )
            .tuples()
            .all()
        )
    assert len(texts) == 10
    assert texts[uuid.UUID(bytes=rows[2].id)] == "answer 2\nline two\ufffd\ufffd"  # newline kept
    assert texts[uuid.UUID(bytes=rows[3].id)] == "answer 3\nline two"
    assert writer.lost == 0


def test_a_backend_answer_with_nul_is_cleaned_where_it_enters_the_transcript() -> None:
    transcript = Transcript()
    transcript.feed(b'{"response": "a\\u0000b\\nc", "done": false}')
    transcript.feed(b'{"message": {"content": " d\\u0000"}, "done": true}')
    assert transcript.text == "a\ufffdb\nc d\ufffd"


async def test_drain_at_shutdown_writes_everything_around_poison_rows(engine: AsyncEngine) -> None:
    key = await a_key(engine)
    writer = a_writer(engine, batch=1000)
    rows = [a_row(key, n, model=POISON if n % 997 == 5 else "m") for n in range(2500)]
    for row in rows:
        writer.record(row)
    assert await asyncio.wait_for(writer.drain(timeout_s=10), 60)
    assert writer.waiting == 0
    assert len(await stored(engine, [row.id for row in rows])) == 2500
    audited, ledger = await books(key)
    assert audited == ledger == sum(3 * n for n in range(2500))
    assert writer.lost == 0


async def test_an_unreachable_database_is_no_refusal_the_rows_wait() -> None:
    """Bisection is for rows the database refused, never for a database that is away:
    nothing is sanitised, lost or dropped then."""
    away = create_engine(services.pg_url("nz_nowhere").replace(f":{services.PG_PORT}/", ":1/"))
    try:
        writer = a_writer(away)
        rows = [a_row(None, n, model=POISON if n == 1 else "m") for n in range(3)]
        for row in rows:
            writer.record(row)
        assert not await writer.flush()
        assert (writer.waiting, writer.lost, writer.written) == (3, 0, 0)
        with pytest.raises(DatabaseUnreachable):
            await record(away, [rows[0].columns()], UTC_ZONE)
    finally:
        await away.dispose()


@asynccontextmanager
async def audit_table_locked(url: str) -> AsyncIterator[None]:
    """Another session holds the lock the writer needs; the database answers everyone
    else (SQLite: a write transaction, in WAL mode readers go on)."""
    if url.startswith("sqlite"):
        holder = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        return
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("LOCK TABLE gateway.audit_log IN ACCESS EXCLUSIVE MODE"))
            yield
            await conn.rollback()
    finally:
        await engine.dispose()


async def test_a_backlog_that_stops_draining_makes_readiness_say_so(
    scratch: str, mock_session: MockProcess
) -> None:
    settings = load_settings(
        {"DATABASE_URL": scratch, "OLLAMA_BASE_URL": mock_session.url}, env_file=None
    )
    gateway = build_gateway(settings)
    writer = gateway.audit
    writer.stall_after_s = 1.0
    await gateway.fleet.apply(settings.configured_backends)
    gateway.supervisor.start(Job("audit", writer.step, wake=writer.wake))
    try:
        ready, checks = await readiness(gateway)
        assert (ready, checks["audit"]) == (True, "ok")
        async with audit_table_locked(scratch):
            writer.record(a_row(None, 1))
            await asyncio.sleep(0.2)
            ready, checks = await readiness(gateway)
            assert (ready, checks["audit"]) == (True, "ok")  # waiting is not stalled yet
            deadline = time.monotonic() + 5
            while ready and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                ready, checks = await readiness(gateway)
            assert not ready
            assert checks == {
                "database": "ok",
                "state_store": "in-process",
                "backend": "ok",
                "audit": "stalled",
                "background": "ok",
            }
            assert writer.waiting == 1
        for _ in range(300):  # the lock gone, the writer gets through by itself
            if not writer.waiting:
                break
            await asyncio.sleep(0.05)
        assert writer.waiting == 0
        ready, checks = await readiness(gateway)
        assert (ready, checks["audit"]) == (True, "ok")
    finally:
        await gateway.supervisor.stop()
        await gateway.fleet.close()
        await gateway.engine.dispose()
