"""Authentication (SPEC §4.1-4.2): from the request's headers to a key's policy.

The order is chosen so that nothing expensive happens for a bad key:

1. The headers must present exactly one key (:func:`presented_key`), which is
   shape-checked (:func:`nz_core.keys.parse_key`): no I/O for garbage or ambiguity.
2. The per-process cache, then the shared cache (one read for concurrent requests of
   one prefix), are looked up by prefix and the SHA-256 of the presented key compared
   in constant time. A cached prefix with the
   wrong secret is refused right there, so the owner of a cached key is never locked
   out and an attacker can never make a cached key cost an argon2 run.
3. On a miss, the verification first takes its slots in the :class:`FailureLimiter`
   (per prefix, per client address, per both), with no await between the check and
   the count; then the key is read from the database and verified with argon2id in a
   worker thread behind a small limiter. Concurrent misses for the same key share one
   verification, and so one slot.

A key found wrong (malformed, absent, revoked, wrong secret) is
:class:`~nz_proxy.errors.InvalidApiKey`: one body, whatever the cause. A key that was
not verified because a limit is spent is :class:`~nz_proxy.errors.VerificationBusy`
(503 with ``Retry-After``), never a 401: prefixes are not secret, and other clients'
failures must not tell a key's owner that the key is wrong (SPEC §3).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import structlog
from anyio import CapacityLimiter
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.credentials import KeyPolicy, load_credentials, store_rehash
from nz_core.errors import DatabaseUnreachable, MalformedKey
from nz_core.keys import KeyHasher, parse_key
from nz_proxy.errors import GatewayUnavailable, InvalidApiKey, VerificationBusy
from nz_proxy.keycache import CachedKey, ExpiringSet, LocalKeyCache, SharedKeyCache

__all__ = ["Attempt", "Authenticator", "FailureLimiter", "presented_key"]

log = structlog.get_logger("nz_proxy.auth")

# argon2 runs in one thread per process: a verification takes ~30 ms of one core, and
# the event loop keeps the other one, so cached keys stay fast while cold ones queue.
ARGON2_THREADS: Final = 1
# Beyond this many verifications waiting, new ones are turned away (503, retry) rather
# than queued for seconds (64 x ~30 ms: two seconds of waiting at most).
MAX_WAITING_VERIFICATIONS: Final = 64
# How long a prefix without an active key is remembered as such.
NEGATIVE_TTL_S: Final = 10.0
# Retry-After when only verifications in flight hold the slots: they end within a
# moment, so the shortest wait a client can be told (SPEC §6.5: whole seconds, >= 1).
BUSY_RETRY_MS: Final = 1000


def presented_key(headers: Iterable[tuple[bytes, bytes]] | Mapping[bytes, bytes]) -> str | None:
    """The one key the request presents, or ``None`` (the 401).

    ``headers`` is the raw ASGI header list, so that a repeated header is seen. The key
    is the bearer token of ``Authorization``, or ``x-api-key`` for clients that send
    that one. Two ``Authorization`` headers, two ``x-api-key`` headers, or both kinds
    with different values are ambiguous (a proxy in front may have read the other one)
    and present no key (SPEC §3); both kinds carrying the same key are fine. A mapping
    cannot hold a repeated header; it is accepted for callers that only have one.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    authorization: list[bytes] = []
    api_key: list[bytes] = []
    for name, value in pairs:
        lowered = name.lower()
        if not value.strip():
            continue  # an empty header presents nothing
        if lowered == b"authorization":
            authorization.append(value)
        elif lowered == b"x-api-key":
            api_key.append(value)
    if len(authorization) > 1 or len(api_key) > 1:
        return None
    if authorization:
        scheme, _, token = authorization[0].strip().partition(b" ")
        bearer = token.strip() if scheme.lower() == b"bearer" else b""
        if api_key and api_key[0].strip() != bearer:
            return None
        return bearer.decode("latin-1") if bearer else None
    if api_key:
        return api_key[0].strip().decode("latin-1")
    return None


@dataclass(slots=True)
class _Tally:
    """One subject's failures in the window (oldest first) and its verifications in
    flight."""

    failures: deque[float] = field(default_factory=deque)
    in_flight: int = 0


class FailureLimiter:
    """Verifications that cost work, counted per prefix, per client address and per
    (prefix, address) in a sliding window, *together with the ones in flight*.

    A verification takes its slots (:meth:`reserve`) before its first await, so no
    burst slips between the check and the count: of 200 simultaneous wrong secrets for
    one prefix, at most ``per_prefix`` reach argon2 and the others are turned away at
    once. A failure keeps its slot for ``window_s``; a success gives it back.

    - ``per_prefix`` bounds the argon2 work one prefix can cost this process.
    - ``per_pair`` (prefix, address) is below it, so one address can never spend a
      prefix's whole capacity: the key's owner elsewhere still gets verified.
    - ``per_address`` bounds what one address can cost across prefixes.
    - ``lookups_per_address`` counts database lookups that found no active key (and
      lookups in flight), much higher, so a client retrying a revoked key does not
      lock out its neighbours behind the same address.

    The defaults: 10 per prefix is ~0.3 s of one core a minute at ~30 ms a run; 5 per
    pair is half of that, so a guesser at one address leaves the owner half; 30 per
    address, three prefixes' worth. A refusal is :class:`VerificationBusy` with the time
    until the window frees a slot. Per process on purpose: it guards this process's CPU.
    """

    def __init__(
        self,
        *,
        per_prefix: int = 10,
        per_pair: int = 5,
        per_address: int = 30,
        lookups_per_address: int = 600,
        window_s: float = 60.0,
        max_tracked: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_prefix = per_prefix
        self.per_pair = per_pair
        self.per_address = per_address
        self.lookups_per_address = lookups_per_address
        self.window_s = window_s
        self.max_tracked = max_tracked
        self.clock = clock
        self._tallies: OrderedDict[str, _Tally] = OrderedDict()

    @property
    def tracked(self) -> int:
        """Subjects with failures in the window or verifications in flight."""
        return len(self._tallies)

    def reserve(self, prefix: str, address: str | None) -> Attempt:
        """Take one verification's slots, or raise :class:`VerificationBusy`.

        Synchronous on purpose: the check and the count happen in one step of the
        event loop, so verifications in flight always count against the limits.
        """
        hashing = [(f"p:{prefix}", self.per_prefix)]
        lookup: list[tuple[str, int]] = []
        if address is not None:  # no address known: only the per-prefix limit applies
            hashing.append((f"a:{address}", self.per_address))
            hashing.append((f"pa:{prefix} {address}", self.per_pair))
            lookup.append((f"l:{address}", self.lookups_per_address))
        now = self.clock()
        waits = [self._wait_ms(name, limit, now) for name, limit in (*hashing, *lookup)]
        busy = [wait for wait in waits if wait is not None]
        if busy:
            raise VerificationBusy(retry_after_ms=max(busy))
        for name, _ in (*hashing, *lookup):
            self._tally(name).in_flight += 1
        return Attempt(self, tuple(n for n, _ in hashing), tuple(n for n, _ in lookup))

    def _wait_ms(self, name: str, limit: int, now: float) -> int | None:
        """None when ``name`` has a free slot, else milliseconds until one frees."""
        tally = self._tallies.get(name)
        if tally is None:
            return None
        self._expire(tally, now)
        excess = len(tally.failures) + tally.in_flight - limit + 1
        if excess <= 0:
            return None
        until_s = 0.0  # only verifications in flight hold the slots
        if excess <= len(tally.failures):
            until_s = tally.failures[excess - 1] + self.window_s - now
        return max(BUSY_RETRY_MS, math.ceil(until_s * 1000))

    def _expire(self, tally: _Tally, now: float) -> None:
        cutoff = now - self.window_s
        while tally.failures and tally.failures[0] <= cutoff:
            tally.failures.popleft()

    def _tally(self, name: str) -> _Tally:
        tally = self._tallies.get(name)
        if tally is None:
            tally = self._tallies[name] = _Tally()
        self._tallies.move_to_end(name)
        while len(self._tallies) > self.max_tracked:
            self._tallies.popitem(last=False)  # memory is bounded before accuracy
        return tally

    def _settle(self, names: tuple[str, ...], *, failed: bool) -> None:
        now = self.clock()
        for name in names:
            tally = self._tallies.get(name)
            if tally is None:  # dropped from a full table meanwhile
                continue
            tally.in_flight = max(0, tally.in_flight - 1)
            if failed:
                tally.failures.append(now)
                continue
            self._expire(tally, now)
            if not tally.failures and not tally.in_flight:
                del self._tallies[name]  # successes and found keys leave nothing behind


class Attempt:
    """The slots one verification holds. Each outcome settles its slots once; leaving
    the ``with`` block gives back whatever no failure kept."""

    __slots__ = ("_hashing", "_limiter", "_lookup")

    def __init__(
        self, limiter: FailureLimiter, hashing: tuple[str, ...], lookup: tuple[str, ...]
    ) -> None:
        self._limiter = limiter
        self._hashing = hashing
        self._lookup = lookup

    def lookup_found(self) -> None:
        """The database has an active key for the prefix: the lookup cost nothing."""
        self._limiter._settle(self._lookup, failed=False)
        self._lookup = ()

    def lookup_missed(self) -> None:
        """No active key for the prefix: the lookup counts for the client address."""
        self._limiter._settle(self._lookup, failed=True)
        self._lookup = ()

    def hash_failed(self) -> None:
        """argon2 found the secret wrong: the slots stay taken for the window."""
        self._limiter._settle(self._hashing, failed=True)
        self._hashing = ()

    def release(self) -> None:
        self._limiter._settle(self._lookup + self._hashing, failed=False)
        self._lookup = self._hashing = ()

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Authenticator:
    """Turns a presented key into its :class:`KeyPolicy`, or refuses it."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        local: LocalKeyCache,
        shared: SharedKeyCache,
        hasher: KeyHasher,
        failures: FailureLimiter | None = None,
    ) -> None:
        self.engine = engine
        self.local = local
        self.shared = shared
        self.hasher = hasher
        self.failures = failures if failures is not None else FailureLimiter()
        self.limiter = CapacityLimiter(ARGON2_THREADS)
        # Prefixes with no active key (unknown or revoked), briefly: a client retrying a
        # revoked key costs no database lookup. Cleared with every eviction.
        self._absent = ExpiringSet(NEGATIVE_TTL_S)
        # False while the revocation listener is down: every eviction could be missed,
        # so the per-process level is not trusted (SPEC §4.5).
        self.local_enabled = True
        # Bumped on every eviction; a verification that raced one does not cache.
        self.epoch = 0
        self._inflight: dict[tuple[str, bytes], asyncio.Future[KeyPolicy]] = {}
        self._reads: dict[tuple[str, int], asyncio.Future[CachedKey | None]] = {}
        self.verifications = 0  # argon2 runs, for metrics and the benchmark
        # Verifications running or waiting for the argon2 thread.
        self._hashing = 0
        self._background: set[asyncio.Task[None]] = set()

    async def authenticate(self, key: str | None, address: str | None) -> KeyPolicy:
        """The policy of ``key``, or :class:`InvalidApiKey`.

        Raises:
            InvalidApiKey: missing, malformed, unknown, wrong or revoked key.
            VerificationBusy: the key was not verified, because the argon2 capacity for
                its prefix, its address or this process is spent (retry later).
            GatewayUnavailable: the shared cache or the database cannot be reached.
        """
        if key is None:
            raise InvalidApiKey
        try:
            parsed = parse_key(key)
        except MalformedKey:
            raise InvalidApiKey from None  # no work done, nothing to count
        prefix = parsed.prefix
        digest = hashlib.sha256(key.encode("ascii")).digest()
        if self.local_enabled:
            entry = self.local.get(prefix)
            if entry is not None:
                return self._checked(entry, digest, prefix, address)
        entry = await self._shared_get(prefix)
        if entry is not None:
            policy = self._checked(entry, digest, prefix, address)
            if self.local_enabled:
                self.local.put(prefix, entry)
            return policy
        if prefix in self._absent:
            raise InvalidApiKey
        # Concurrent misses for the same key share one verification, which runs as
        # its own task so a client that hangs up does not waste the work.
        flight = (prefix, digest)
        verification = self._inflight.get(flight)
        if verification is None:
            verification = asyncio.ensure_future(self._verify(key, prefix, digest, address))
            self._inflight[flight] = verification
            verification.add_done_callback(lambda done: self._settled(flight, done))
        return await asyncio.shield(verification)

    async def _shared_get(self, prefix: str) -> CachedKey | None:
        # Concurrent reads of one prefix share one round trip: a burst of guesses at
        # one prefix costs the shared cache one read, not one each (200 guesses in
        # production mode: another tenant's p99 during the burst fell from 184-318 ms
        # to 74-139 ms). Keyed by epoch, so a request that arrives after an eviction
        # never joins a read that started before it.
        read = (prefix, self.epoch)
        pending = self._reads.get(read)
        if pending is None:
            pending = asyncio.ensure_future(self.shared.get(prefix))
            self._reads[read] = pending
            pending.add_done_callback(lambda done: self._read_done(read, done))
        return await asyncio.shield(pending)

    def _read_done(self, read: tuple[str, int], done: asyncio.Future[CachedKey | None]) -> None:
        del self._reads[read]
        if not done.cancelled():
            done.exception()  # mark retrieved: callers that hung up will not read it

    def _settled(self, flight: tuple[str, bytes], done: asyncio.Future[KeyPolicy]) -> None:
        del self._inflight[flight]
        if not done.cancelled():
            done.exception()  # mark retrieved: callers that hung up will not read it

    def _checked(
        self, entry: CachedKey, digest: bytes, prefix: str, address: str | None
    ) -> KeyPolicy:
        if hmac.compare_digest(entry.digest, digest):
            return entry.policy
        raise InvalidApiKey  # a cached prefix with the wrong secret: refused, no hashing

    async def _verify(self, key: str, prefix: str, digest: bytes, address: str | None) -> KeyPolicy:
        # The slots are taken before the first await: however many arrive at once,
        # each one sees all the others in flight.
        with self.failures.reserve(prefix, address) as attempt:
            epoch = self.epoch
            try:
                credentials = await load_credentials(self.engine, prefix)
            except DatabaseUnreachable:
                raise GatewayUnavailable("database") from None
            if credentials is None:
                attempt.lookup_missed()
                if epoch == self.epoch:
                    self._absent.add(prefix)
                raise InvalidApiKey
            attempt.lookup_found()
            if not await self._argon2(credentials.hash, key):
                attempt.hash_failed()
                raise InvalidApiKey
        entry = CachedKey(digest=digest, policy=credentials.policy)
        if epoch == self.epoch:  # no revocation or policy change raced this read
            await self.shared.put(prefix, entry)
            if self.local_enabled:
                self.local.put(prefix, entry)
        if self.hasher.needs_rehash(credentials.hash):
            self.spawn(self._rehash(credentials.policy.key_id, credentials.hash, key))
        return credentials.policy

    async def _argon2(self, encoded: str, key: str) -> bool:
        # Counted from before the wait for the thread, so the bound holds for a burst.
        if self._hashing >= ARGON2_THREADS + MAX_WAITING_VERIFICATIONS:
            raise VerificationBusy(retry_after_ms=BUSY_RETRY_MS)
        self._hashing += 1
        self.verifications += 1
        try:
            return await anyio.to_thread.run_sync(
                self.hasher.verify, encoded, key, limiter=self.limiter
            )
        finally:
            self._hashing -= 1

    async def _rehash(self, key_id: int, old_hash: str, key: str) -> None:
        new_hash = await anyio.to_thread.run_sync(self.hasher.hash, key, limiter=self.limiter)
        try:
            await store_rehash(self.engine, key_id, old_hash, new_hash)
        except DatabaseUnreachable:
            log.warning("rehash_deferred", key_id=key_id)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run background work of the key cache (a rehash, an eviction) as its own task,
        which :meth:`close` lets finish."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self, grace_s: float = 5.0) -> None:
        """Let rehashes and evictions in progress finish (graceful stop), before the
        database and Redis clients close: a task cut off mid-write, or one run after
        them, would leave its connection to the garbage collector."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=grace_s)

    async def evict(self, prefix: str) -> None:
        """Forget ``prefix`` in both levels (revocation or policy change)."""
        self.evict_local(prefix)
        await self.shared.evict(prefix)

    def evict_local(self, prefix: str) -> None:
        self.epoch += 1
        self.local.evict(prefix)
        self._absent.discard(prefix)

    def suspend_local(self) -> None:
        """The listener is down: drop the per-process level and stop using it."""
        self.epoch += 1
        self.local_enabled = False
        self.local.clear()
        self._absent.clear()

    def resume_local(self) -> None:
        self.local_enabled = True
