"""The audit log's writer: one row per request, written in batches off the request path
(SPEC §4.8).

Rows wait in a bounded in-memory buffer and are flushed every ``FLUSH_INTERVAL_S`` (or
as soon as a batch is full) by :func:`nz_core.ledger.record`, which writes the audit
rows and the budget ledger in one transaction, idempotently. While the database is
away the buffer holds them; once it holds ``AUDIT_BUFFER_ROWS``, new requests are
refused with 503 (:attr:`AuditWriter.full`) so nothing is served unaudited. In
production, admitted requests are also journaled in Redis until their row is written
(:mod:`nz_proxy.admission.stores`), and rows reaped from gateways that died come back through
:meth:`AuditWriter.record` too.

One row never stalls the writer (SPEC §3, poison strings). Client strings are cleaned
where they enter (:func:`nz_proxy.exchange.clean_text`); should a row still be refused
for what it holds (:class:`nz_core.errors.RowsRefused`), the batch is bisected until
the refused row is alone, that row is written sanitised, and one that is refused even
so is logged with its request id, counted in :attr:`AuditWriter.lost` and dropped. Every
part is one idempotent :func:`~nz_core.ledger.record` call, so rows and ledger are
written once however the batch is cut. A backlog that stops draining while the
database answers is :meth:`AuditWriter.stalled`, which ``/readyz`` reports.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgspec
import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.budgets import Period, period_bounds
from nz_core.database import describe_error
from nz_core.errors import DatabaseError
from nz_core.ledger import RowsRefused, record
from nz_proxy.admission.stores import StateStore
from nz_proxy.exchange import Exchange, clean_text, redact_path
from nz_proxy.promptlog import storable

__all__ = [
    "AuditRow",
    "AuditWriter",
    "PromptRecord",
    "decode_row",
    "encode_row",
    "row_of",
    "sanitised",
    "sanitised_prompt",
]

log = structlog.get_logger("nz_proxy.audit")

FLUSH_INTERVAL_S: Final = 0.2
BATCH_ROWS: Final = 1000
# The longest pause between two attempts while the database fails.
MAX_BACKOFF_S: Final = 5.0
# Rows that waited this long without a single successful write, while the database
# answers, mean the writer is stuck (a lock it waits on, an error it cannot get past,
# a loop that died): two full backoff periods, so a writer that is alive has tried at
# least twice in that time, and a database that has just come back gets its chance.
STALL_AFTER_S: Final = 2 * MAX_BACKOFF_S
# Journal entries whose release failed, kept to retry (the reaper covers any more).
MAX_UNRELEASED: Final = 100_000


class AuditRow(msgspec.Struct, array_like=True, frozen=True):
    """One request's audit row, compact enough to journal beside its reservation."""

    id: bytes
    request_id: str
    ts_us: int
    tenant_id: int | None
    key_id: int | None
    key_prefix: str | None
    endpoint: str
    model: str | None
    tokens_in: int
    tokens_out: int
    status: int
    latency_ms: int
    ttft_ms: int | None
    client_ip: str | None
    stream: bool
    # Last, with a default: journal entries written before it existed still decode.
    backend: str | None = None

    @property
    def ts(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=self.ts_us)

    def columns(self) -> dict[str, Any]:
        """The row for :func:`nz_core.ledger.record`."""
        return {
            "id": uuid.UUID(bytes=self.id),
            "request_id": self.request_id,
            "ts": self.ts,
            "tenant_id": self.tenant_id,
            "key_id": self.key_id,
            "key_prefix": self.key_prefix,
            "endpoint": self.endpoint,
            "model": self.model,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "client_ip": self.client_ip,
            "stream": self.stream,
            "backend": self.backend,
        }


class PromptRecord(msgspec.Struct, frozen=True):
    """An opted-in key's prompt and answer, kept for its retention (SPEC §10)."""

    id: bytes
    request_id: str
    key_id: int
    ts_us: int
    request_body: str
    response_text: str
    retention_days: int

    def columns(self) -> dict[str, Any]:
        ts = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=self.ts_us)
        return {
            "id": uuid.UUID(bytes=self.id),
            "request_id": self.request_id,
            "key_id": self.key_id,
            "ts": ts,
            "request_body": self.request_body,
            "response_text": self.response_text,
            "expires_at": ts + timedelta(days=self.retention_days),
        }


_encode: Final = msgspec.msgpack.Encoder().encode
_decode: Final = msgspec.msgpack.Decoder(AuditRow).decode


def encode_row(row: AuditRow) -> bytes:
    return _encode(row)


def decode_row(raw: bytes) -> AuditRow:
    return _decode(raw)


def row_of(exchange: Exchange, *, status: int | None = None) -> AuditRow:
    """The audit row of ``exchange`` as it stands now."""
    policy = exchange.policy
    return AuditRow(
        id=exchange.id.bytes,
        request_id=exchange.request_id,
        ts_us=int(exchange.ts.timestamp() * 1_000_000),
        tenant_id=policy.tenant_id if policy else None,
        key_id=policy.key_id if policy else None,
        key_prefix=exchange.key_prefix,
        endpoint=exchange.endpoint or redact_path(exchange.path)[:200],
        model=exchange.model,
        tokens_in=exchange.tokens_in,
        tokens_out=exchange.tokens_out,
        status=status if status is not None else exchange.status,
        latency_ms=exchange.elapsed_ms(),
        ttft_ms=exchange.ttft_ms,
        client_ip=exchange.client_ip,
        stream=exchange.stream,
        backend=exchange.backend,
    )


# The ranges of the audit table's integer columns (PostgreSQL integer and smallint).
_INT_MAX: Final = 2**31 - 1
_SMALLINT_MAX: Final = 2**15 - 1
_MAX_RETENTION_DAYS: Final = 100 * 366


def _bounded(value: int, top: int = _INT_MAX) -> int:
    return min(max(value, 0), top)


def sanitised(row: AuditRow) -> AuditRow:
    """``row`` as any database takes it: every text column through
    :func:`~nz_proxy.exchange.clean_text` (a key prefix at its column's width), every
    number in its column's range. The ledger is computed from the same row, so it still
    equals the audit tokens."""
    return msgspec.structs.replace(
        row,
        request_id=clean_text(row.request_id, 64),
        key_prefix=None if row.key_prefix is None else clean_text(row.key_prefix, 12),
        endpoint=clean_text(row.endpoint),
        model=None if row.model is None else clean_text(row.model),
        client_ip=None if row.client_ip is None else clean_text(row.client_ip, 64),
        backend=None if row.backend is None else clean_text(row.backend, 64),
        tokens_in=_bounded(row.tokens_in),
        tokens_out=_bounded(row.tokens_out),
        status=_bounded(row.status, _SMALLINT_MAX),
        latency_ms=_bounded(row.latency_ms),
        ttft_ms=None if row.ttft_ms is None else _bounded(row.ttft_ms),
    )


def sanitised_prompt(prompt: PromptRecord) -> PromptRecord:
    """``prompt`` with what no database stores replaced (its text is kept otherwise)."""
    return msgspec.structs.replace(
        prompt,
        request_id=clean_text(prompt.request_id, 64),
        request_body=storable(prompt.request_body),
        response_text=storable(prompt.response_text),
        # expires_at = ts + retention must stay a representable timestamp.
        retention_days=min(max(prompt.retention_days, 1), _MAX_RETENTION_DAYS),
    )


# One buffered row and whether to release its journal entry once written.
_Entry = tuple[AuditRow, bool]


class AuditWriter:
    """The buffer and the loop that empties it into the database (module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        store: StateStore,
        tz: ZoneInfo,
        *,
        capacity: int,
        interval_s: float = FLUSH_INTERVAL_S,
        batch: int = BATCH_ROWS,
        stall_after_s: float = STALL_AFTER_S,
    ) -> None:
        self.engine = engine
        self.store = store
        self.tz = tz
        self.capacity = capacity
        self.interval_s = interval_s
        self.batch = batch
        self.stall_after_s = stall_after_s
        self._rows: deque[_Entry] = deque()
        self._prompts: deque[PromptRecord] = deque()
        self._unreleased: list[tuple[str, str]] = []  # journal entries Redis missed
        self._wake = asyncio.Event()
        # Held while a batch moves from the buffer to the ledger, so a counter rebuilt
        # from ledger + buffer sees each row exactly once (never mid-move).
        self.flushing = asyncio.Lock()
        self.healthy = True
        self.written = 0
        # Rows and prompts the database refused even sanitised (each logged once).
        self.lost = 0
        # When the backlog last moved: a write that succeeded, or the first row to
        # arrive at an empty buffer (monotonic clock).
        self._moved = time.monotonic()

    @property
    def full(self) -> bool:
        """No room for more requests: refuse them (SPEC §4.8)."""
        return len(self._rows) >= self.capacity

    @property
    def waiting(self) -> int:
        return len(self._rows)

    def record(self, row: AuditRow, *, release: bool = False) -> None:
        """Queue a row. Never refused: the request it records has already happened."""
        if not self._rows and not self._prompts:
            self._moved = time.monotonic()  # a wait starts now
        self._rows.append((row, release))
        if len(self._rows) >= self.batch:
            self._wake.set()

    def observe(self, exchange: Exchange) -> None:
        """The recorder's observer: every API request leaves one row."""
        if exchange.audited and not exchange.row_owed:
            self.record(row_of(exchange), release=exchange.journaled)

    def record_prompt(self, prompt: PromptRecord) -> None:
        if not self._rows and not self._prompts:
            self._moved = time.monotonic()
        self._prompts.append(prompt)

    def stalled(self, now: float | None = None) -> bool:
        """Rows have waited ``stall_after_s`` and not one write succeeded meanwhile.

        Whether that is the database being away is for the caller to tell (``/readyz``
        asks the database itself); a stalled writer is also woken, so one that is only
        sitting out its backoff after an outage tries again at once."""
        if not self._rows and not self._prompts:
            return False
        now = time.monotonic() if now is None else now
        if now - self._moved <= self.stall_after_s:
            return False
        self._wake.set()
        return True

    def pending_tokens(self, key_id: int, period: Period, start: datetime) -> int:
        """Tokens of rows not written yet that belong to this key's period (for counters
        rebuilt from the ledger before this process flushed)."""
        total = 0
        for row, _ in self._rows:
            if row.key_id == key_id and period_bounds(period, row.ts, self.tz)[0] == start:
                total += row.tokens_in + row.tokens_out
        return total

    async def flush(self) -> bool:
        """Write one batch. False when the database could not take it: what was not
        written stays. Rows it refused for what they hold never stay: they are written
        sanitised, or counted as lost."""
        if not self._rows and not self._prompts:
            if self._unreleased:
                await self._release(())
            return True
        async with self.flushing:
            ok, done = await self._write()
        await self._release(
            [(row.key_prefix or "", row.id.hex()) for row, release in done if release]
        )
        return ok

    async def _write(self) -> tuple[bool, list[_Entry]]:
        """Move one batch from the buffer to the database: (all of it, the rows done)."""
        rows = [self._rows[i] for i in range(min(self.batch, len(self._rows)))]
        prompts = [self._prompts[i] for i in range(min(self.batch, len(self._prompts)))]
        done_rows: list[_Entry] = []
        done_prompts: list[PromptRecord] = []
        try:
            await self._store(rows, prompts, done_rows, done_prompts)
        except Exception as exc:  # the database is away or failing: the rest stays
            self._failed(exc)
            return False, done_rows
        finally:
            # Even when a later part failed (or the task was cancelled at shutdown),
            # the parts written are gone from the buffer: never counted twice by a
            # rebuilt counter, and a retry writes nothing twice anyway (idempotent).
            _forget(self._rows, rows, done_rows)
            _forget(self._prompts, prompts, done_prompts)
        self.healthy = True
        return True, done_rows

    async def _store(
        self,
        rows: list[_Entry],
        prompts: list[PromptRecord],
        done_rows: list[_Entry],
        done_prompts: list[PromptRecord],
    ) -> None:
        """Write ``rows`` and ``prompts``; a part refused for what it holds is halved
        until the refused item is alone (about 2·log2(batch) more round trips for one
        bad row in a batch). Raises when the database cannot take what is left."""
        try:
            await self._record(rows, prompts)
        except RowsRefused as refused:
            count = len(rows) + len(prompts)
            if count == 1:
                await self._store_alone(rows, prompts, refused, done_rows, done_prompts)
                return
            half = count // 2
            cut = max(0, half - len(rows))
            await self._store(rows[:half], prompts[:cut], done_rows, done_prompts)
            await self._store(rows[half:], prompts[cut:], done_rows, done_prompts)
            return
        self._moved = time.monotonic()
        self.written += len(rows)
        done_rows.extend(rows)
        done_prompts.extend(prompts)

    async def _store_alone(
        self,
        rows: list[_Entry],
        prompts: list[PromptRecord],
        refused: RowsRefused,
        done_rows: list[_Entry],
        done_prompts: list[PromptRecord],
    ) -> None:
        """The one row (or prompt) the database refused: written sanitised; refused even
        so, logged once with its request id, counted as lost and dropped (retrying it
        as it is would only stall everything behind it)."""
        if rows:
            (row, release), *_ = rows
            kind, request_id = "audit_row", row.request_id
            clean_rows, clean_prompts = [(sanitised(row), release)], []
            changed = clean_rows[0][0] != row
        else:
            (prompt, *_) = prompts
            kind, request_id = "prompt_log", prompt.request_id
            clean_rows, clean_prompts = [], [sanitised_prompt(prompt)]
            changed = clean_prompts[0] != prompt
        request_id = clean_text(request_id, 64)
        reason = str(refused)
        if changed:
            try:
                await self._record(clean_rows, clean_prompts)
            except RowsRefused as again:
                reason = str(again)
            else:
                log.warning("audit_row_sanitised", kind=kind, request_id=request_id, reason=reason)
                self._moved = time.monotonic()
                self.written += len(rows)
                done_rows.extend(rows)  # the buffered entries themselves, to forget them
                done_prompts.extend(prompts)
                return
        self.lost += 1
        log.error("audit_row_lost", kind=kind, request_id=request_id, reason=reason)
        done_rows.extend(rows)  # dealt with: its journal entry is released too
        done_prompts.extend(prompts)

    async def _record(self, rows: list[_Entry], prompts: list[PromptRecord]) -> None:
        try:
            row_columns = [row.columns() for row, _ in rows]
            prompt_columns = [prompt.columns() for prompt in prompts]
        except (ValueError, OverflowError) as exc:
            # A value no column can hold (a timestamp past year 9999, an id that is no
            # UUID: a corrupt journal entry) is refused like one the database refused.
            raise RowsRefused(f"unrepresentable value: {type(exc).__name__}") from exc
        await record(self.engine, row_columns, self.tz, prompt_columns)

    def _failed(self, exc: Exception) -> None:
        """Log the first failure of a streak; the rows stay for the next attempt."""
        if not self.healthy:
            return
        self.healthy = False
        if isinstance(exc, (DatabaseError, OSError, SQLAlchemyError)):
            # Never the driver error's full text (nor a traceback that carries it): it
            # quotes the statement's parameters, and those hold prompts.
            error = str(exc) if isinstance(exc, DatabaseError) else describe_error(exc)
            log.warning(
                "audit_flush_failed",
                error=error,
                error_type=type(exc).__name__,
                waiting=len(self._rows),
            )
        else:  # not the database: a defect, worth its traceback
            log.error("audit_flush_crashed", waiting=len(self._rows), exc_info=exc)

    async def _release(self, entries: Sequence[tuple[str, str]]) -> None:
        entries = [*self._unreleased, *entries]
        if not entries:
            return
        try:
            await self.store.release(entries)
        except RedisError as exc:
            # Retried with the next batch. Past the bound, the reaper finds them once
            # their grace is over (and audits them again, which writes nothing).
            log.warning("journal_release_failed", error=type(exc).__name__, rows=len(entries))
            self._unreleased = entries[-MAX_UNRELEASED:]
        else:
            self._unreleased = []

    @property
    def wake(self) -> asyncio.Event:
        """Set when a batch is full or a backlog stalls: the writer should run now."""
        return self._wake

    async def step(self) -> float:
        """Write what waits (a supervised step). Raises while the database does not take
        rows, so the supervisor backs off; the rows stay."""
        self._wake.clear()
        while True:
            if not await self.flush():
                raise DatabaseError("the audit rows could not be written")
            if len(self._rows) < self.batch:
                return self.interval_s

    async def _flush_safely(self) -> bool:
        try:
            return await self.flush()
        except Exception:  # the writer must outlive any surprise; the rows stay
            log.exception("audit_flush_crashed", waiting=len(self._rows))
            return False

    async def drain(self, timeout_s: float) -> bool:
        """Write everything (graceful shutdown); False if rows remain at the deadline.
        A refused row costs its bisection, never the drain."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._rows or self._prompts:
            if await self._flush_safely():
                continue
            if loop.time() >= deadline:
                log.error(
                    "audit_rows_lost_at_shutdown",
                    rows=len(self._rows),
                    prompts=len(self._prompts),
                )
                return False
            await asyncio.sleep(0.25)
        return True


def _forget(buffer: deque[Any], batch: list[Any], done: list[Any]) -> None:
    """Take the ``done`` items of ``batch`` (the head of ``buffer``) out of ``buffer``."""
    if not done:
        return
    if len(done) == len(batch):
        for _ in batch:
            buffer.popleft()
        return
    gone = {id(item) for item in done}
    head = [buffer.popleft() for _ in batch]
    buffer.extendleft(reversed([item for item in head if id(item) not in gone]))
