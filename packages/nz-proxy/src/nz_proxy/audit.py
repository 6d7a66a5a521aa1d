"""The audit log's writer: one row per request, written in batches off the request path
(SPEC §4.8).

Rows wait in a bounded in-memory buffer and are flushed every ``FLUSH_INTERVAL_S`` (or
as soon as a batch is full) by :func:`nz_core.ledger.record`, which writes the audit
rows and the budget ledger in one transaction, idempotently. While the database is
away the buffer holds them; once it holds ``AUDIT_BUFFER_ROWS``, new requests are
refused with 503 (:attr:`AuditWriter.full`) so nothing is served unaudited. In
production, admitted requests are also journaled in Redis until their row is written
(:mod:`nz_proxy.state`), and rows reaped from gateways that died come back through
:meth:`AuditWriter.record` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgspec
import structlog
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.budgets import Period, period_bounds
from nz_core.errors import DatabaseError
from nz_core.ledger import record
from nz_proxy.exchange import Exchange, redact_path
from nz_proxy.state import StateStore

__all__ = ["AuditRow", "AuditWriter", "PromptRecord", "decode_row", "encode_row", "row_of"]

log = structlog.get_logger("nz_proxy.audit")

FLUSH_INTERVAL_S: Final = 0.2
BATCH_ROWS: Final = 1000
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
    )


class AuditWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        store: StateStore,
        tz: ZoneInfo,
        *,
        capacity: int,
        interval_s: float = FLUSH_INTERVAL_S,
        batch: int = BATCH_ROWS,
    ) -> None:
        self.engine = engine
        self.store = store
        self.tz = tz
        self.capacity = capacity
        self.interval_s = interval_s
        self.batch = batch
        # (row, release its journal entry once written)
        self._rows: deque[tuple[AuditRow, bool]] = deque()
        self._prompts: deque[PromptRecord] = deque()
        self._unreleased: list[tuple[str, str]] = []  # journal entries Redis missed
        self._wake = asyncio.Event()
        # Held while a batch moves from the buffer to the ledger, so a counter rebuilt
        # from ledger + buffer sees each row exactly once (never mid-move).
        self.flushing = asyncio.Lock()
        self.healthy = True
        self.written = 0

    @property
    def full(self) -> bool:
        """No room for more requests: refuse them (SPEC §4.8)."""
        return len(self._rows) >= self.capacity

    @property
    def waiting(self) -> int:
        return len(self._rows)

    def record(self, row: AuditRow, *, release: bool = False) -> None:
        """Queue a row. Never refused: the request it records has already happened."""
        self._rows.append((row, release))
        if len(self._rows) >= self.batch:
            self._wake.set()

    def observe(self, exchange: Exchange) -> None:
        """The recorder's observer: every API request leaves one row."""
        if exchange.audited and not exchange.row_owed:
            self.record(row_of(exchange), release=exchange.journaled)

    def record_prompt(self, prompt: PromptRecord) -> None:
        self._prompts.append(prompt)

    def pending_tokens(self, key_id: int, period: Period, start: datetime) -> int:
        """Tokens of rows not written yet that belong to this key's period (for counters
        rebuilt from the ledger before this process flushed)."""
        total = 0
        for row, _ in self._rows:
            if row.key_id == key_id and period_bounds(period, row.ts, self.tz)[0] == start:
                total += row.tokens_in + row.tokens_out
        return total

    async def flush(self) -> bool:
        """Write one batch. False when the database refused it (the rows stay)."""
        if not self._rows and not self._prompts:
            if self._unreleased:
                await self._release(())
            return True
        async with self.flushing:
            rows = await self._write()
        if rows is None:
            return False
        await self._release(
            [(row.key_prefix or "", row.id.hex()) for row, release in rows if release]
        )
        return True

    async def _write(self) -> list[tuple[AuditRow, bool]] | None:
        """Move one batch from the buffer to the database; None if it refused."""
        rows = [self._rows[i] for i in range(min(self.batch, len(self._rows)))]
        prompts = [self._prompts[i] for i in range(min(self.batch, len(self._prompts)))]
        try:
            await record(
                self.engine,
                [row.columns() for row, _ in rows],
                self.tz,
                [prompt.columns() for prompt in prompts],
            )
        except (DatabaseError, OSError) as exc:
            if self.healthy:
                log.warning("audit_flush_failed", error=str(exc), waiting=len(self._rows))
            self.healthy = False
            return None
        for _ in rows:
            self._rows.popleft()
        for _ in prompts:
            self._prompts.popleft()
        self.healthy = True
        self.written += len(rows)
        return rows

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

    async def run(self) -> None:
        """Flush until cancelled, backing off while the database is away."""
        backoff = self.interval_s
        while True:
            with contextlib.suppress(TimeoutError):  # woken early when a batch is full
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()
            try:
                ok = await self.flush()
                while ok and len(self._rows) >= self.batch:
                    ok = await self.flush()
            except Exception:  # the writer must outlive any surprise; the rows stay
                log.exception("audit_flush_crashed", waiting=len(self._rows))
                ok = False
            backoff = self.interval_s if ok else min(backoff * 2, 5.0)

    async def drain(self, timeout_s: float) -> bool:
        """Write everything (graceful shutdown); False if rows remain at the deadline."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._rows or self._prompts:
            if await self.flush():
                continue
            if asyncio.get_running_loop().time() >= deadline:
                log.error("audit_rows_lost_at_shutdown", rows=len(self._rows))
                return False
            await asyncio.sleep(0.25)
        return True
