"""Authentication (SPEC §4.1-4.2): from an ``Authorization`` header to a key's policy.

The order is chosen so that nothing expensive happens for a bad key:

1. The header is shape-checked (:func:`nz_core.keys.parse_key`): no I/O for garbage.
2. The per-process cache, then the shared cache, are looked up by prefix and the
   SHA-256 of the presented key compared in constant time. A cached prefix with the
   wrong secret is refused right there, so the owner of a cached key is never locked
   out and an attacker can never make a cached key cost an argon2 run.
3. On a miss, recent failures for the prefix and for the client address are checked
   *before* any work, then the key is read from the database and verified with
   argon2id in a worker thread behind a small limiter. Concurrent misses for the same
   key share one verification.

Every refusal is :class:`~nz_proxy.errors.InvalidApiKey`: one body, whatever the cause.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine, Mapping
from typing import Any, Final

import anyio
import structlog
from anyio import CapacityLimiter
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.credentials import KeyPolicy, load_credentials, store_rehash
from nz_core.errors import DatabaseUnreachable, MalformedKey
from nz_core.keys import KeyHasher, parse_key
from nz_proxy.errors import GatewayUnavailable, InvalidApiKey
from nz_proxy.keycache import CachedKey, ExpiringSet, LocalKeyCache, SharedKeyCache

__all__ = ["Authenticator", "FailureLimiter", "presented_key"]

log = structlog.get_logger("nz_proxy.auth")

# argon2 runs in one thread per process: a verification takes ~30 ms of one core, and
# the event loop keeps the other one, so cached keys stay fast while cold ones queue.
ARGON2_THREADS: Final = 1
# Beyond this many verifications waiting, new ones are turned away (503, retry) rather
# than queued for seconds.
MAX_WAITING_VERIFICATIONS: Final = 64
# How long a prefix without an active key is remembered as such.
NEGATIVE_TTL_S: Final = 10.0


def presented_key(headers: Mapping[bytes, bytes]) -> str | None:
    """The key from ``Authorization: Bearer …``, else from ``x-api-key``."""
    authorization = headers.get(b"authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            return value.strip().decode("latin-1")
    api_key = headers.get(b"x-api-key")
    if api_key is not None and api_key.strip():
        return api_key.strip().decode("latin-1")
    return None


class FailureLimiter:
    """Failures that cost work, counted per prefix and per client address in a sliding
    window, and checked before that work is done again.

    Only failed argon2 verifications count towards ``per_prefix`` and ``per_address``:
    they are what an attacker who knows a prefix can make expensive. Database lookups
    that found no active key count separately per address (``lookups_per_address``,
    much higher), so a client retrying a revoked key cannot lock out its neighbours
    behind the same address. Per process on purpose: it guards this process's CPU.
    """

    def __init__(
        self,
        *,
        per_prefix: int = 10,
        per_address: int = 30,
        lookups_per_address: int = 600,
        window_s: float = 60.0,
        max_tracked: int = 100_000,
    ) -> None:
        self.limits = {"p": per_prefix, "a": per_address, "l": lookups_per_address}
        self.window_s = window_s
        self.max_tracked = max_tracked
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _over(self, kind: str, subject: str | None) -> bool:
        if subject is None:
            return False
        times = self._failures.get(f"{kind}:{subject}")
        if times is None:
            return False
        cutoff = time.monotonic() - self.window_s
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times) >= self.limits[kind]

    def hashing_blocked(self, prefix: str, address: str | None) -> bool:
        return self._over("p", prefix) or self._over("a", address)

    def lookup_blocked(self, address: str | None) -> bool:
        return self._over("l", address)

    def hash_failed(self, prefix: str, address: str | None) -> None:
        self._add("p", prefix)
        self._add("a", address)

    def lookup_missed(self, address: str | None) -> None:
        self._add("l", address)

    def _add(self, kind: str, subject: str | None) -> None:
        if subject is None:
            return
        name = f"{kind}:{subject}"
        times = self._failures.get(name)
        if times is None:
            times = self._failures[name] = deque()
        self._failures.move_to_end(name)
        times.append(time.monotonic())
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)


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
        self.failures = failures or FailureLimiter()
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
        self.verifications = 0  # argon2 runs, for metrics and the benchmark
        self._background: set[asyncio.Task[None]] = set()

    async def authenticate(self, key: str | None, address: str | None) -> KeyPolicy:
        """The policy of ``key``, or :class:`InvalidApiKey`.

        Raises:
            InvalidApiKey: missing, malformed, unknown, wrong or revoked key.
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
        entry = await self.shared.get(prefix)
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
        if self.limiter.statistics().tasks_waiting >= MAX_WAITING_VERIFICATIONS:
            raise GatewayUnavailable("key verification queue")
        if self.failures.lookup_blocked(address):
            raise InvalidApiKey
        epoch = self.epoch
        try:
            credentials = await load_credentials(self.engine, prefix)
        except DatabaseUnreachable:
            raise GatewayUnavailable("database") from None
        if credentials is None:
            self.failures.lookup_missed(address)
            if epoch == self.epoch:
                self._absent.add(prefix)
            raise InvalidApiKey
        if self.failures.hashing_blocked(prefix, address):
            raise InvalidApiKey
        self.verifications += 1
        valid = await anyio.to_thread.run_sync(
            self.hasher.verify, credentials.hash, key, limiter=self.limiter
        )
        if not valid:
            self.failures.hash_failed(prefix, address)
            raise InvalidApiKey
        entry = CachedKey(digest=digest, policy=credentials.policy)
        if epoch == self.epoch:  # no revocation or policy change raced this read
            await self.shared.put(prefix, entry)
            if self.local_enabled:
                self.local.put(prefix, entry)
        if self.hasher.needs_rehash(credentials.hash):
            self._spawn(self._rehash(credentials.policy.key_id, credentials.hash, key))
        return credentials.policy

    async def _rehash(self, key_id: int, old_hash: str, key: str) -> None:
        new_hash = await anyio.to_thread.run_sync(self.hasher.hash, key, limiter=self.limiter)
        try:
            await store_rehash(self.engine, key_id, old_hash, new_hash)
        except DatabaseUnreachable:
            log.warning("rehash_deferred", key_id=key_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
