"""Live mixed traffic, and the books it must balance afterwards.

Workers send, round-robin over the tenants: native streamed chats, OpenAI chats,
embeddings, and OpenAI streams the client abandons after the first chunk. Every request
carries its own ``X-Request-ID``, so each outcome the clients saw can be matched to its
audit row afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from nz_core.database import connect, create_engine
from nz_core.schema import api_keys, audit_log, budget_usage
from tests.reliability.stack import Tenant

__all__ = ["KINDS", "Books", "Outcome", "Traffic", "reconcile"]

KINDS = ("native-stream", "openai-chat", "embeddings", "openai-abandon")
PROMPT = [{"role": "user", "content": "Tell me about the sea."}]


@dataclass
class Outcome:
    """What one client saw: an HTTP status, or a transport error (status ``None``)."""

    rid: str
    kind: str
    tenant: str
    started: float
    ended: float = 0.0
    status: int | None = None
    error: str | None = None
    stream_error: bool = False


@dataclass
class Traffic:
    """Closed-loop workers sending mixed requests until stopped."""

    url: str
    tenants: Sequence[Tenant]
    workers: int = 6
    pause_s: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    async def __aenter__(self) -> Traffic:
        limits = httpx.Limits(max_connections=self.workers, max_keepalive_connections=self.workers)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=limits)
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._client.aclose()

    async def _worker(self) -> None:
        while not self._stop.is_set():
            turn = next(self._turn)
            tenant = self.tenants[turn % len(self.tenants)]
            kind = KINDS[(turn // len(self.tenants)) % len(KINDS)]
            outcome = Outcome(f"fm-{uuid.uuid4().hex}", kind, tenant.name, time.monotonic())
            self.outcomes.append(outcome)
            try:
                await self._send(outcome, tenant)
            except httpx.HTTPError as exc:
                outcome.error = type(exc).__name__
            outcome.ended = time.monotonic()
            if outcome.status is None or outcome.status >= 500:
                await asyncio.sleep(0.05)  # don't spin on a dead gateway
            if self.pause_s:
                await asyncio.sleep(self.pause_s)

    async def _send(self, outcome: Outcome, tenant: Tenant) -> None:
        headers = {"Authorization": f"Bearer {tenant.key}", "X-Request-ID": outcome.rid}
        chat = {"model": "llama3.2", "messages": PROMPT, "max_tokens": 8}
        if outcome.kind == "native-stream":
            body = {"model": "llama3.2", "messages": PROMPT, "options": {"num_predict": 8}}
            async with self._client.stream(
                "POST", self.url + "/api/chat", json=body, headers=headers
            ) as response:
                outcome.status = response.status_code
                async for line in response.aiter_lines():
                    if line and "error" in json.loads(line):
                        outcome.stream_error = True
        elif outcome.kind == "openai-chat":
            response = await self._client.post(
                self.url + "/v1/chat/completions", json=chat, headers=headers
            )
            outcome.status = response.status_code
        elif outcome.kind == "embeddings":
            body = {"model": "nomic-embed-text", "input": ["one", "two"]}
            response = await self._client.post(
                self.url + "/v1/embeddings", json=body, headers=headers
            )
            outcome.status = response.status_code
        else:  # the client walks away after the first chunk
            async with self._client.stream(
                "POST",
                self.url + "/v1/chat/completions",
                json={**chat, "stream": True, "max_tokens": 64},
                headers=headers,
            ) as response:
                outcome.status = response.status_code
                async for _ in response.aiter_bytes():
                    break

    def statuses(
        self, since: float = 0.0, until: float = float("inf"), ended_by: float = float("inf")
    ) -> Counter[str]:
        """Statuses seen by requests that started in [since, until) and ended by
        ``ended_by``."""
        return Counter(
            str(o.status) if o.status is not None else o.error or "pending"
            for o in self.outcomes
            if since <= o.started < until and o.ended <= ended_by
        )

    def first(self, since: float, predicate: Any) -> float | None:
        """Seconds from ``since`` until the first request ending after it that matches."""
        ends = [o.ended for o in self.outcomes if o.ended >= since and predicate(o)]
        return min(ends) - since if ends else None


@dataclass
class Books:
    """What reconciliation found; every list should be empty."""

    requests: int
    audited: int
    missing: list[str]
    duplicated: list[str]
    ledger_mismatch: dict[str, tuple[int, int]]
    leaked_leases: dict[str, int]
    open_journal: dict[str, int]
    counter_mismatch: dict[str, tuple[int, int]]

    @property
    def clean(self) -> bool:
        return not (
            self.missing
            or self.duplicated
            or self.ledger_mismatch
            or self.leaked_leases
            or self.open_journal
            or self.counter_mismatch
        )

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "audited": self.audited,
            "lost": len(self.missing),
            "double_counted": len(self.duplicated),
            "ledger_mismatches": len(self.ledger_mismatch),
            "leaked_slots": sum(self.leaked_leases.values()),
            "unsettled_reservations": sum(self.open_journal.values()) + len(self.counter_mismatch),
        }


async def _audit_counts(database_url: str, rids: Sequence[str]) -> Counter[str]:
    engine = create_engine(database_url)
    try:
        counts: Counter[str] = Counter()
        async with connect(engine) as conn:
            # In slices: a query takes at most 32,767 parameters (a long soak has more).
            for start in range(0, len(rids), 10_000):
                rows = await conn.execute(
                    sa.select(audit_log.c.request_id, sa.func.count())
                    .where(audit_log.c.request_id.in_(rids[start : start + 10_000]))
                    .group_by(audit_log.c.request_id)
                )
                counts.update({rid: int(n) for rid, n in rows})
        return counts
    finally:
        await engine.dispose()


async def _tokens(database_url: str, prefixes: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(audit tokens, ledger ``total`` tokens) per key prefix."""
    engine = create_engine(database_url)
    try:
        async with connect(engine) as conn:
            audited = dict(
                (
                    await conn.execute(
                        sa.select(
                            audit_log.c.key_prefix,
                            sa.func.sum(audit_log.c.tokens_in + audit_log.c.tokens_out),
                        )
                        .where(audit_log.c.key_prefix.in_(prefixes))
                        .group_by(audit_log.c.key_prefix)
                    )
                ).all()
            )
            ledger = dict(
                (
                    await conn.execute(
                        sa.select(api_keys.c.prefix, budget_usage.c.tokens)
                        .join(budget_usage, budget_usage.c.key_id == api_keys.c.id)
                        .where(api_keys.c.prefix.in_(prefixes), budget_usage.c.period == "total")
                    )
                ).all()
            )
    finally:
        await engine.dispose()
    return {p: (int(audited.get(p) or 0), int(ledger.get(p) or 0)) for p in prefixes}


async def reconcile(
    outcomes: Sequence[Outcome],
    tenants: Sequence[Tenant],
    database_url: str,
    store: redis.Redis,
    wait_s: float = 30.0,
) -> Books:
    """Balance the books once the gateway has written everything it will write.

    - a request the gateway answered has exactly one audit row; one that never got an
      answer (the gateway was killed mid-request) has at most one;
    - each key's ledger equals its audit tokens;
    - no concurrency lease, journal entry or reservation is left behind.
    """
    answered = [o.rid for o in outcomes if o.status is not None]
    deadline = time.monotonic() + wait_s
    while True:
        counts = await _audit_counts(database_url, [o.rid for o in outcomes])
        missing = [rid for rid in answered if counts[rid] == 0]
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    prefixes = [t.prefix for t in tenants]
    tokens = await _tokens(database_url, prefixes)
    leases: dict[str, int] = {}
    journal: dict[str, int] = {}
    counters: dict[str, tuple[int, int]] = {}
    for prefix in prefixes:
        tag = f"gw:{{{prefix}}}"
        # Leases are scored by expiry and pruned lazily: only unexpired ones hold a slot.
        seconds, micros = store.time()
        held = int(store.zcount(f"{tag}:lease", seconds * 1000 + micros // 1000, "+inf"))
        if held:
            leases[prefix] = held
        pending = int(store.hlen(f"{tag}:journal"))
        if pending:
            journal[prefix] = pending
        # The live total counter (settled tokens plus open reservations) must equal the
        # ledger once everything is settled; it may be absent (Redis restarted, and no
        # request since has rebuilt it).
        live = [int(store.get(k) or 0) for k in store.scan_iter(f"{tag}:budget:total:*")]
        if live and live[0] != tokens[prefix][1]:
            counters[prefix] = (live[0], tokens[prefix][1])
    return Books(
        requests=len(outcomes),
        audited=sum(counts.values()),
        missing=missing,
        duplicated=[rid for rid, n in counts.items() if n > 1],
        ledger_mismatch={p: t for p, t in tokens.items() if t[0] != t[1]},
        leaked_leases=leases,
        open_journal=journal,
        counter_mismatch=counters,
    )
