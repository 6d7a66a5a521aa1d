"""The admission decision for one API key (SPEC §4.4), in one place.

:class:`KeyState` keeps one key's state and decides with the arithmetic of
:mod:`nz_core.windows` and :mod:`nz_core.budgets`. The in-process state store runs it
as it is; the Redis scripts implement the same algorithm in Lua, and property tests
hold them to this one: fed the same operations at the same times, they must make the
same decisions.

One admission checks, in order: the request window (``rpm``); then, every budget
counter being known, for inference the concurrency leases, the token window (``tpm``)
and every budget period. A request is refused by the first that cannot take it, and
nothing is recorded; the refusal still reports the windows and budgets as they stand.
Listings only count towards ``rpm``, and report the rest. An admitted
inference request holds a lease and a reservation until it is settled; settlement
replaces the reservation with the tokens actually used, exactly once. A reservation
whose lease ran out unsettled stays counted at its reserved amount.

A request that fans out to several backend calls (``n`` choices, a batch of prompts)
asks with a ``count``: it counts as that many requests towards ``rpm``, needs that many
free concurrency slots, and reserves a completion cap for each call; it is still
admitted, renewed and settled as one, and refused whole.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from nz_core.budgets import Period, PeriodState, binding_period, blocking_period
from nz_core.limits import Limits
from nz_core.windows import (
    REQUEST_WINDOW_MS,
    TOKEN_WINDOW_BUCKETS,
    WindowCheck,
    check_concurrency,
    check_tokens,
    check_window,
    token_bucket,
)

__all__ = [
    "Ask",
    "BlockedBy",
    "BudgetLine",
    "Decision",
    "KeyState",
    "Reservation",
    "plan_reservation",
    "uncounted",
]


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One configured budget period of a key: its limit, the identity of the counter
    that holds the current period's usage (e.g. ``"day:1764115200"``), and how long
    that counter must live (0: for ever, as ``total`` never resets)."""

    period: Period
    limit: int
    counter: str
    ttl_ms: int = 0


@dataclass(frozen=True, slots=True)
class Ask:
    """What one request asks of its key: the request's own part (its id, whether it
    runs a model, its prompt estimate and completion cap, how many backend calls it
    makes) and the key's terms it is decided under (limits, budgets, default cap,
    lease), which the admission fills in. ``prompt_estimate`` covers every call; the
    cap is per call."""

    rid: str  # unique per request (the audit id), never the client's request id
    inference: bool  # generation or embedding, as opposed to listing models
    limits: Limits = field(default_factory=Limits)
    budgets: tuple[BudgetLine, ...] = ()
    prompt_estimate: int = 0
    requested_cap: int | None = None
    default_cap: int = 4096
    lease_ms: int = 30_000
    generates: bool = True  # False for embeddings: no completion, no cap
    count: int = 1  # backend calls (choices); each counts as a request and holds a slot

    @property
    def reserves(self) -> bool:
        """Whether this request reserves tokens: only inference, and only where tokens
        are counted (a token window or a budget)."""
        return self.inference and (self.limits.tpm is not None or bool(self.budgets))


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one admission.

    ``reason`` is ``None`` when admitted, else ``"rpm"``, ``"concurrency"``, ``"tpm"`` or
    ``"budget"``; ``blocking`` is then the budget period a retry must wait for.
    ``missing`` lists budget counters that are unknown and must be seeded first (from
    the ledger); nothing was decided then. ``budget_states`` are after the reservation.
    """

    admitted: bool
    reason: str | None = None
    retry_after_ms: int | None = None
    blocking: Period | None = None
    cap: int | None = None
    reserved: int = 0
    requests: WindowCheck | None = None
    tokens: WindowCheck | None = None
    budget_states: tuple[PeriodState, ...] = ()
    missing: tuple[BudgetLine, ...] = ()

    @property
    def binding(self) -> PeriodState | None:
        return binding_period(self.budget_states)


@dataclass(frozen=True, slots=True)
class BlockedBy:
    """A reservation no budget period can hold; ``period`` is the one to wait for."""

    period: Period | None


def plan_reservation(
    ask: Ask, states: tuple[PeriodState, ...]
) -> tuple[int | None, int] | BlockedBy:
    """(completion cap, tokens reserved) for an inference request, or what blocks it.

    A generating request reserves its prompt estimate plus its completion cap for each
    of its ``count`` calls (the client's cap, else the default clipped to each call's
    share of what the budget has left); an embedding reserves its prompt estimate
    alone and has no cap.
    """
    estimate, count = ask.prompt_estimate, ask.count
    remaining = min((s.remaining for s in states), default=None)
    if not ask.generates:
        if remaining is not None and estimate > remaining:
            blocker = blocking_period(states, estimate)
            return BlockedBy(blocker.period if blocker else None)
        return None, estimate
    requested = ask.requested_cap if ask.requested_cap and ask.requested_cap > 0 else None
    if remaining is None:
        cap = requested if requested is not None else ask.default_cap
        return cap, estimate + count * cap
    share = (remaining - estimate) // count
    cap = requested if requested is not None else min(ask.default_cap, share)
    if cap < 1 or estimate + count * cap > remaining:
        blocker = blocking_period(states, estimate + count * max(cap, 1))
        return BlockedBy(blocker.period if blocker else None)
    return cap, estimate + count * cap


def uncounted(requests: WindowCheck | None, count: int = 1) -> WindowCheck | None:
    """The request window for a request refused later: it was not counted after all."""
    if requests is None:
        return None
    return WindowCheck(True, requests.used, requests.remaining + count, 0, requests.reset_ms)


@dataclass(slots=True)
class Reservation:
    reserved: int
    bucket: int
    counters: tuple[str, ...]
    slots: int = 1  # concurrency slots its lease holds


@dataclass
class KeyState:
    """Everything one key's admission depends on, in structures that stay cheap at any
    limit: admission times in arrival order (times never go backwards on the stores'
    clocks), a handful of token buckets, one lease and one reservation per request."""

    admitted_at: deque[int] = field(default_factory=deque)  # inside the request window
    buckets: dict[int, int] = field(default_factory=dict)  # token window
    leases: dict[str, int] = field(default_factory=dict)  # rid → expiry (of ``slots`` slots)
    counters: dict[str, int] = field(default_factory=dict)  # budget counter → tokens
    pending: dict[str, Reservation] = field(default_factory=dict)

    def seed(self, counter: str, tokens: int) -> None:
        """Set an unknown counter (from the ledger); a known one is left alone."""
        self.counters.setdefault(counter, tokens)

    def admit(self, ask: Ask, now_ms: int) -> Decision:
        """Decide one admission and, when admitted, record it."""
        self.forget_old(now_ms)
        limits = ask.limits
        requests = None
        if limits.rpm is not None:
            requests = check_window(self.admitted_at, now_ms, limits.rpm, ask.count)
            if not requests.allowed:
                return Decision(False, "rpm", requests.retry_after_ms, requests=requests)
        missing = tuple(b for b in ask.budgets if b.counter not in self.counters)
        if missing:
            return Decision(False, missing=missing)
        states = self._states(ask)
        # Every later refusal reports the windows as they stand, this request uncounted.
        tokens = check_tokens(self.buckets, now_ms, limits.tpm) if limits.tpm is not None else None
        refusal = self._refusal(ask, now_ms, tokens)
        cap: int | None = None
        reserved = 0
        if refusal is None and ask.reserves:
            plan = plan_reservation(ask, states)
            if isinstance(plan, BlockedBy):
                refusal = ("budget", None, plan.period)
            else:
                cap, reserved = plan
        if refusal is not None:
            reason, wait, blocking = refusal
            return Decision(
                False,
                reason,
                wait,
                blocking,
                requests=uncounted(requests, ask.count),
                tokens=tokens,
                budget_states=states,
            )
        self._record(ask, now_ms, reserved)
        return Decision(
            True,
            cap=cap,
            reserved=reserved,
            requests=requests,
            tokens=tokens,
            budget_states=self._states(ask),
        )

    def _states(self, ask: Ask) -> tuple[PeriodState, ...]:
        return tuple(PeriodState(b.period, b.limit, self.counters[b.counter]) for b in ask.budgets)

    def _refusal(
        self, ask: Ask, now_ms: int, tokens: WindowCheck | None
    ) -> tuple[str, int | None, Period | None] | None:
        """Concurrency, then the token window: inference only."""
        if not ask.inference:
            return None
        if ask.limits.concurrent is not None:
            slots = [
                expiry
                for rid, expiry in self.leases.items()
                for _ in range(self.pending[rid].slots)
            ]
            concurrency = check_concurrency(slots, now_ms, ask.limits.concurrent, ask.count)
            if not concurrency.allowed:
                return "concurrency", concurrency.retry_after_ms, None
        if tokens is not None and not tokens.allowed:
            return "tpm", tokens.retry_after_ms, None
        return None

    def _record(self, ask: Ask, now_ms: int, reserved: int) -> None:
        if ask.limits.rpm is not None:
            self.admitted_at.extend([now_ms] * ask.count)
        if not ask.inference:
            return
        self.leases[ask.rid] = now_ms + ask.lease_ms
        bucket = token_bucket(now_ms)
        if ask.limits.tpm is not None and reserved:
            self.buckets[bucket] = self.buckets.get(bucket, 0) + reserved
        for line in ask.budgets:
            self.counters[line.counter] += reserved
        counters = tuple(b.counter for b in ask.budgets)
        self.pending[ask.rid] = Reservation(reserved, bucket, counters, ask.count)

    def settle(self, rid: str, tokens: int, now_ms: int, *, counts_tokens: bool) -> bool:
        """Replace ``rid``'s reservation by ``tokens``. False when there is nothing to
        settle (already settled, or never admitted)."""
        reservation = self.pending.pop(rid, None)
        self.leases.pop(rid, None)
        if reservation is None:
            return False
        delta = tokens - reservation.reserved
        for counter in reservation.counters:
            if counter in self.counters:
                self.counters[counter] = max(0, self.counters[counter] + delta)
        if counts_tokens:
            # The reservation leaves the bucket it was counted in; what was used counts now.
            left = self.buckets.get(reservation.bucket, 0) - reservation.reserved
            if left > 0:
                self.buckets[reservation.bucket] = left
            else:
                self.buckets.pop(reservation.bucket, None)
            if tokens:
                current = token_bucket(now_ms)
                self.buckets[current] = self.buckets.get(current, 0) + tokens
        return True

    def renew(self, rid: str, now_ms: int, lease_ms: int) -> bool:
        """Extend a live lease (long streams); False when it is gone. An expired lease
        stays expired: its slot may already be someone else's."""
        if self.leases.get(rid, now_ms) <= now_ms:
            return False
        self.leases[rid] = now_ms + lease_ms
        return True

    def forget_old(self, now_ms: int) -> None:
        """Drop what no window can count any more (the Redis scripts expire it alike)."""
        window = self.admitted_at
        while window and window[0] <= now_ms - REQUEST_WINDOW_MS:
            window.popleft()
        oldest = token_bucket(now_ms) - TOKEN_WINDOW_BUCKETS
        for bucket in [b for b in self.buckets if b <= oldest]:
            del self.buckets[bucket]

    def forget_lapsed(self, now_ms: int, grace_ms: int) -> None:
        """Forget requests whose lease ran out more than ``grace_ms`` ago: they stay
        counted at their reservation (SPEC §4.4), and nothing will settle them."""
        for rid in [r for r, expiry in self.leases.items() if expiry <= now_ms - grace_ms]:
            del self.leases[rid]
            self.pending.pop(rid, None)
