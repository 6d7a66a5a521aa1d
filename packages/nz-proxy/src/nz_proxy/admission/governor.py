"""Admission with limits and budgets (SPEC §4.4): :class:`Governor` implements
:class:`nz_proxy.admission.Admission` over a :class:`~nz_proxy.admission.stores.StateStore`.

Per request it builds the key's budget periods (calendar day and month in
``BUDGET_TIMEZONE``, and all time), asks the store once, and turns the decision into
either a ticket with the headers of SPEC §6.5, or a 429 with ``Retry-After``. A budget
counter the store does not know (Redis restarted, a new period began) is rebuilt from
the ledger first. Settlement is one more store call, replayed by
:mod:`nz_proxy.admission.backlog` when Redis does not answer. Leases of requests still
running are renewed in one batch every third of the lease time.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final

import structlog
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.budgets import Period, PeriodCalendar, seconds_until_reset
from nz_core.credentials import KeyPolicy
from nz_core.errors import DatabaseUnreachable
from nz_core.ledger import period_tokens
from nz_core.limiter import Ask, BudgetLine, Decision
from nz_proxy.admission import Ticket
from nz_proxy.admission.backlog import Backlog, Gate, Owed
from nz_proxy.admission.stores import Settled, StateStore
from nz_proxy.audit import AuditWriter, decode_row
from nz_proxy.errors import BudgetExhausted, GatewayError, GatewayUnavailable, LimitExceeded
from nz_proxy.settings import Settings

__all__ = ["Governor", "duration", "rate_headers"]

log = structlog.get_logger("nz_proxy.admission.governor")

# A budget counter outlives its period by a day, so late settlements still find it.
COUNTER_GRACE_MS: Final = 86_400_000
# A rebuild waits this long at most for rows other processes have yet to write (a flush
# takes 0.2 s; a process that died holding one lets its mark expire after 5 s).
REBUILD_WAIT_S: Final = 2.0
REBUILD_RETRY_S: Final = 0.02


def duration(ms: int) -> str:
    """A wait as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    ms = max(0, ms)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, seconds = divmod(math.ceil(ms / 1000), 60)
    return f"{minutes}m{seconds}s"


def rate_headers(policy: KeyPolicy, decision: Decision) -> list[tuple[bytes, bytes]]:
    """SPEC §6.5: what is left as of admission. Unlimited limits send no headers."""
    headers: list[tuple[bytes, bytes]] = []
    requests, tokens = decision.requests, decision.tokens
    if policy.limits.rpm is not None and requests is not None:
        headers += [
            (b"x-ratelimit-limit-requests", str(policy.limits.rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(requests.remaining).encode()),
            (b"x-ratelimit-reset-requests", duration(requests.reset_ms).encode()),
        ]
    if policy.limits.tpm is not None and tokens is not None:
        left = max(0, tokens.remaining - decision.reserved) if tokens.allowed else 0
        headers += [
            (b"x-ratelimit-limit-tokens", str(policy.limits.tpm).encode()),
            (b"x-ratelimit-remaining-tokens", str(left).encode()),
            (b"x-ratelimit-reset-tokens", duration(tokens.reset_ms).encode()),
        ]
    binding = decision.binding
    if binding is not None:
        headers += [
            (b"x-budget-period", binding.period.value.encode()),
            (b"x-budget-tokens-remaining", str(binding.remaining).encode()),
        ]
    return headers


class Governor:
    def __init__(
        self,
        store: StateStore,
        engine: AsyncEngine,
        audit: AuditWriter,
        settings: Settings,
    ) -> None:
        self.store = store
        self.engine = engine
        self.audit = audit
        self.tz = settings.zone
        self.calendar = PeriodCalendar(settings.zone)
        self.default_cap = settings.budget_default_completion_cap
        self.lease_ms = int(settings.concurrency_lease_s * 1000)
        self._running: dict[str, tuple[str, Ask]] = {}  # rid → (prefix, ask)
        # Settlements Redis could not take, replayed when it answers again.
        self.gate = Gate()
        self.backlog = Backlog(store, audit, self.gate)

    @property
    def journals(self) -> bool:
        """Whether settlement should carry the audit row (the store keeps a journal)."""
        return self.store.journals

    def budget_lines(self, policy: KeyPolicy, now: datetime) -> tuple[BudgetLine, ...]:
        lines = []
        for period, limit in policy.budgets.limits().items():
            start, end = self.calendar.bounds(period, now)
            ttl = 0 if end is None else int((end - now).total_seconds() * 1000) + COUNTER_GRACE_MS
            lines.append(BudgetLine(period, limit, f"{period.value}:{int(start.timestamp())}", ttl))
        return tuple(lines)

    async def admit(self, policy: KeyPolicy, ask: Ask, journal: bytes = b"") -> Ticket:
        if self.audit.full:
            raise GatewayUnavailable("audit log")
        now = datetime.now(UTC)
        budgets = self.budget_lines(policy, now)
        limits = policy.limits
        if not ask.inference and limits.rpm is None and limits.tpm is None and not budgets:
            return Ticket(ask=ask, policy=policy)  # nothing to count or report
        ask = replace(
            ask,
            limits=limits,
            budgets=budgets,
            default_cap=self.default_cap,
            lease_ms=self.lease_ms,
        )
        admitted_ms = int(now.timestamp() * 1000)
        decision = await self._decide(policy, ask, journal, now, admitted_ms)
        headers = rate_headers(policy, decision)
        if not decision.admitted:
            raise self._refusal(decision, headers, now)
        if ask.inference:
            self._running[ask.rid] = (policy.prefix, ask)
        cap = decision.cap
        if cap is None and ask.inference and ask.generates:
            # Nothing counted for this key, so nothing reserved: the generation is still
            # bounded, so that `num_predict: -1` cannot hold a GPU slot without end.
            cap = ask.requested_cap if ask.requested_cap and ask.requested_cap > 0 else None
            cap = cap or self.default_cap
        return Ticket(
            ask=ask,
            policy=policy,
            cap=cap,
            headers=headers,
            counted=True,
            reserved=decision.reserved,
            admitted_ms=admitted_ms,
        )

    async def _decide(
        self, policy: KeyPolicy, ask: Ask, journal: bytes, now: datetime, admitted_ms: int
    ) -> Decision:
        for _ in range(3):
            try:
                decision = await self.store.admit(policy.prefix, ask, journal)
            except RedisError as exc:
                if ask.inference and isinstance(exc, RedisTimeout):
                    # Sent, maybe run later: a frozen Redis reads it when it thaws.
                    self.backlog.cancel(policy.prefix, ask, admitted_ms)
                raise GatewayUnavailable(f"redis: {type(exc).__name__}") from None
            if not decision.missing:
                return decision
            for line in decision.missing:
                await self._rebuild(policy, line, now)
        raise GatewayUnavailable("budget counters")

    async def _rebuild(self, policy: KeyPolicy, line: BudgetLine, now: datetime) -> None:
        """A counter the store lost or never had: the ledger, plus what this process
        has not written to it yet. Rows other processes settled after Redis lost the
        counter are marked in the store until they reach the ledger; the rebuild waits
        for them (they land within a flush) and reads the ledger again if one landed
        while it read."""
        start, _ = self.calendar.bounds(line.period, now)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REBUILD_WAIT_S
        while True:
            try:
                epoch = await self.store.ledger_epoch(policy.prefix)
                if epoch is not None:
                    async with self.gate.rebuild():
                        tokens = await self._ledger(policy, line, start)
                        if await self.store.seed(
                            policy.prefix, line.counter, tokens, line.ttl_ms, epoch
                        ):
                            break
            except RedisError as exc:
                raise GatewayUnavailable(f"redis: {type(exc).__name__}") from None
            if loop.time() >= deadline:
                raise GatewayUnavailable("budget counters: rows not on the ledger yet")
            await asyncio.sleep(REBUILD_RETRY_S)
        log.info(
            "budget_counter_rebuilt", key_prefix=policy.prefix, period=line.period, tokens=tokens
        )

    async def _ledger(self, policy: KeyPolicy, line: BudgetLine, start: datetime) -> int:
        """The period's tokens on the ledger and in this process's audit buffer."""
        async with self.audit.flushing:
            try:
                tokens = await period_tokens(self.engine, policy.key_id, line.period, start)
            except DatabaseUnreachable:
                raise GatewayUnavailable("database") from None
            return tokens + self.audit.pending_tokens(policy.key_id, line.period, start)

    def _refusal(
        self, decision: Decision, headers: list[tuple[bytes, bytes]], now: datetime
    ) -> GatewayError:
        error: GatewayError
        wait = decision.retry_after_ms or 1000
        if decision.reason == "rpm":
            error = LimitExceeded(
                "rpm_exceeded", "Request rate limit reached.", retry_after_ms=wait
            )
        elif decision.reason == "tpm":
            error = LimitExceeded("tpm_exceeded", "Token rate limit reached.", retry_after_ms=wait)
        elif decision.reason == "concurrency":
            error = LimitExceeded(
                "concurrency_exceeded", "Too many requests in flight.", retry_after_ms=wait
            )
        else:
            period = decision.blocking or Period.TOTAL
            reset = seconds_until_reset(period, now, self.tz)
            error = BudgetExhausted(
                period.value, retry_after_ms=None if reset is None else math.ceil(reset * 1000)
            )
        error.extra_headers = headers
        return error

    async def settle(
        self, ticket: Ticket, tokens_in: int, tokens_out: int, journal: bytes = b""
    ) -> Settled:
        ask = ticket.ask
        if not ticket.counted or not ask.inference:
            return Settled.SETTLED  # only inference reserves anything
        self._running.pop(ask.rid, None)
        tokens = tokens_in + tokens_out
        async with self.gate:
            try:
                outcome = await self.store.settle(
                    ticket.policy.prefix, ask, tokens, journal, ticket.admitted_ms
                )
            except RedisError:
                # The reservation stays counted (the safe side) until Redis answers
                # again; the audit row waits with the settlement, whose outcome it
                # depends on.
                owed = Owed(
                    ticket.policy.prefix, ask, tokens, ticket.reserved, journal, ticket.admitted_ms
                )
                self.backlog.add(owed)
                return Settled.PENDING
            if outcome is Settled.UNKNOWN and journal:
                # Redis lost the reservation. No counter rebuilt from here on may miss
                # this row: it goes to the audit buffer before the gate opens.
                # Once written, its unledgered mark is released (settle.lua).
                self.audit.record(decode_row(journal), release=True)
        return outcome

    async def close(self) -> None:
        await self.backlog.close()

    @property
    def running(self) -> int:
        return len(self._running)

    async def renew_step(self) -> float:
        """Renew every running request's lease (a supervised step), every third of the
        lease time."""
        leases = list(self._running.values())
        if leases:
            await self.store.renew(leases)
        return self.lease_ms / 3000
