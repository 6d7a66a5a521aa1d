"""The Redis state store: shared by every gateway process (SPEC §4.4, §9).

Each operation is one Lua script call: one round trip to admit, one to settle (calls
made together share one pipeline, see :mod:`nz_proxy.admission.stores.pipelining`). The
scripts are package files registered once (redis-py reloads them after ``NOSCRIPT``),
take every key through ``KEYS``, and keep all keys of one API key under its hash tag
``{prefix}`` so they work on Redis Cluster. Time comes from Redis (``TIME``) unless a
test passes its own clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any, Final

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from nz_core.budgets import Period, PeriodState
from nz_core.limiter import Ask, Decision
from nz_core.windows import WindowCheck
from nz_proxy.admission.stores import JournalEntry, Settled
from nz_proxy.admission.stores.pipelining import ScriptPipeline

__all__ = ["RedisStore", "key_names"]

RESET_ORDER: Final = {Period.DAY: 0, Period.MONTH: 1, Period.TOTAL: 2}


def _script(redis: Redis, name: str) -> AsyncScript:
    source = files("nz_proxy.admission.stores").joinpath(f"{name}.lua").read_text()
    return redis.register_script(source)


def key_names(prefix: str) -> tuple[str, str, str, str]:
    """The request window, token window, leases and journal of one API key."""
    tag = f"gw:{{{prefix}}}"
    return f"{tag}:rpm", f"{tag}:tpm", f"{tag}:lease", f"{tag}:journal"


def counter_key(prefix: str, counter: str) -> str:
    return f"gw:{{{prefix}}}:budget:{counter}"


def rebuilt_key(prefix: str, counter: str) -> str:
    """When the counter was last rebuilt from the ledger (Redis ms)."""
    return f"gw:{{{prefix}}}:rebuilt:{counter}"


def unledgered_key(prefix: str) -> str:
    """Requests settled while their counters were lost, whose rows are not on the ledger
    yet: a counter rebuilt from the ledger now would miss them."""
    return f"gw:{{{prefix}}}:unledgered"


def epoch_key(prefix: str) -> str:
    """Moves whenever a marked row lands on the ledger."""
    return f"gw:{{{prefix}}}:ledger-epoch"


def _prefix_of(journal_key: str) -> str:
    return journal_key[journal_key.index("{") + 1 : journal_key.index("}")]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    journals = True

    def __init__(
        self,
        redis: Redis,
        *,
        clock: Callable[[], int] | None = None,
        deadline_s: float | None = None,
    ) -> None:
        self.redis = redis
        # Tests pass a clock; production takes time from Redis, shared by all processes.
        self.clock = clock
        self._admit = _script(redis, "admit")
        self._settle = _script(redis, "settle")
        self._renew = _script(redis, "renew")
        self._seed = _script(redis, "seed")
        self._reap = _script(redis, "reap")
        self._release = _script(redis, "release")
        self._calls = ScriptPipeline(redis, deadline_s)

    def _now(self) -> str:
        return "" if self.clock is None else str(self.clock())

    async def admit(self, prefix: str, ask: Ask, journal: bytes) -> Decision:
        budgets = ask.budgets
        keys = [*key_names(prefix), *(counter_key(prefix, b.counter) for b in budgets)]
        limits = ask.limits
        args: list[str | int | bytes] = [
            ask.rid,
            self._now(),
            int(ask.inference),
            limits.rpm or 0,
            limits.tpm or 0,
            limits.concurrent or 0,
            ask.lease_ms,
            ask.prompt_estimate,
            ask.requested_cap if ask.requested_cap and ask.requested_cap > 0 else 0,
            ask.default_cap,
            int(ask.generates),
            journal,
            ask.count,
        ]
        for line in budgets:
            args += [line.limit, line.ttl_ms, RESET_ORDER[line.period]]
        reply = await self._calls.run(self._admit, keys, args)
        return self._decision(ask, reply)

    @staticmethod
    def _decision(ask: Ask, reply: list[Any]) -> Decision:
        status, reason = int(reply[0]), _text(reply[1])
        retry, cap, reserved, blocker = int(reply[2]), int(reply[3]), int(reply[4]), int(reply[10])
        if status == 2:
            return Decision(
                False, missing=tuple(ask.budgets[int(i) - 1] for i in reason.split(","))
            )
        requests, tokens = _windows(ask, status, reason, retry, reply)
        if status == 0 and reason == "rpm":  # refused before the budgets were read
            return Decision(False, "rpm", retry, requests=requests)
        states = tuple(
            PeriodState(line.period, line.limit, int(value))
            for line, value in zip(ask.budgets, reply[11:], strict=True)
        )
        if status == 0:
            blocking = ask.budgets[blocker - 1].period if blocker else None
            return Decision(
                False,
                reason,
                None if reason == "budget" else retry,
                blocking,
                requests=requests,
                tokens=tokens,
                budget_states=states,
            )
        return Decision(
            True,
            cap=cap if ask.reserves and ask.generates else None,
            reserved=reserved,
            requests=requests,
            tokens=tokens,
            budget_states=states,
        )

    async def settle(
        self, prefix: str, ask: Ask, tokens: int, journal: bytes, admitted_ms: int | None = None
    ) -> Settled:
        _, tpm_key, lease_key, journal_key = key_names(prefix)
        keys = [tpm_key, lease_key, journal_key, unledgered_key(prefix)]
        keys += [counter_key(prefix, b.counter) for b in ask.budgets]
        keys += [rebuilt_key(prefix, b.counter) for b in ask.budgets]
        args: list[str | int | bytes] = [
            ask.rid,
            self._now(),
            tokens,
            int(ask.limits.tpm is not None),
            journal,
            "" if admitted_ms is None else admitted_ms,
            ask.count,
        ]
        outcome = int(await self._calls.run(self._settle, keys, args))
        return {1: Settled.SETTLED, 2: Settled.ABANDONED}.get(outcome, Settled.UNKNOWN)

    async def renew(self, leases: Sequence[tuple[str, Ask]]) -> None:
        if not leases:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for prefix, ask in leases:
                args: list[str | int] = [ask.rid, ask.lease_ms, self._now(), ask.count]
                await self._renew(keys=[key_names(prefix)[2]], args=args, client=pipe)
            await pipe.execute()

    async def ledger_epoch(self, prefix: str) -> str | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(unledgered_key(prefix))
            pipe.get(epoch_key(prefix))
            marked, epoch = await pipe.execute()
        return None if marked else _text(epoch or b"")

    async def seed(
        self, prefix: str, counter: str, tokens: int, ttl_ms: int, epoch: str | None = None
    ) -> bool:
        keys = [
            counter_key(prefix, counter),
            rebuilt_key(prefix, counter),
            unledgered_key(prefix),
            epoch_key(prefix),
        ]
        args: list[str | int] = [tokens, ttl_ms, self._now(), "-" if epoch is None else epoch]
        return int(await self._seed(keys=keys, args=args)) >= 0

    async def reap(self, grace_ms: int) -> list[JournalEntry]:
        found: list[JournalEntry] = []
        async for raw_key in self.redis.scan_iter(match="gw:{*}:journal", count=1000):
            journal_key = _text(raw_key)
            prefix = _prefix_of(journal_key)
            lease_key = key_names(prefix)[2]
            reply = await self._reap(keys=[lease_key, journal_key], args=[self._now(), grace_ms])
            for rid, entry in zip(reply[::2], reply[1::2], strict=True):
                raw = entry if isinstance(entry, bytes) else str(entry).encode()
                found.append(_journal_entry(prefix, _text(rid), raw))
        return found

    async def release(self, entries: Sequence[tuple[str, str]]) -> None:
        if not entries:
            return
        by_prefix: dict[str, list[str]] = {}
        for prefix, rid in entries:
            by_prefix.setdefault(prefix, []).append(rid)
        async with self.redis.pipeline(transaction=False) as pipe:
            for prefix, rids in by_prefix.items():
                keys = [key_names(prefix)[3], unledgered_key(prefix), epoch_key(prefix)]
                await self._release(keys=keys, args=rids, client=pipe)
            await pipe.execute()

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        return None  # the client belongs to the gateway


def _windows(
    ask: Ask, status: int, reason: str, retry: int, reply: list[Any]
) -> tuple[WindowCheck | None, WindowCheck | None]:
    """The request and token windows as the admit script reported them."""
    req_used, req_reset, tok_used, tok_reset, tok_retry = (int(v) for v in reply[5:10])
    limits = ask.limits
    requests = tokens = None
    if limits.rpm is not None and req_used >= 0:
        if status == 1:
            remaining = limits.rpm - req_used - ask.count
            requests = WindowCheck(True, req_used, remaining, 0, req_reset)
        elif reason == "rpm":
            requests = WindowCheck(False, req_used, 0, retry, req_reset)
        else:  # refused later: this request was not counted
            requests = WindowCheck(True, req_used, limits.rpm - req_used, 0, req_reset)
    if limits.tpm is not None and tok_used >= 0:
        ok = tok_used < limits.tpm
        left = limits.tpm - tok_used if ok else 0
        tokens = WindowCheck(ok, tok_used, left, 0 if ok else tok_retry, tok_reset)
    return requests, tokens


def _journal_entry(prefix: str, rid: str, entry: bytes) -> JournalEntry:
    """Parse ``A|reserved|bucket|admitted|row`` or ``S|settled|row``."""
    if entry.startswith(b"S|"):
        row = entry.split(b"|", 2)[2]
        return JournalEntry(prefix, rid, abandoned=False, row=row)
    _, reserved, _, _, row = entry.split(b"|", 4)
    return JournalEntry(prefix, rid, abandoned=True, row=row, reserved=int(reserved))
