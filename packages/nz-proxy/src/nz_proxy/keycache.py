"""The two-level cache of verified keys (SPEC §4.2).

An entry holds the SHA-256 digest of a key that passed argon2id verification and the
key's policy. The per-process level answers the hot path without any I/O; the shared
level (Redis in production, in-process in embedded mode) lets a replica that has not
seen a key yet skip argon2 when another replica verified it. Both are evicted on
revocation and policy change (SPEC §4.5).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Final, Protocol

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from nz_core.credentials import KeyPolicy
from nz_proxy.errors import GatewayUnavailable

__all__ = [
    "CachedKey",
    "ExpiringSet",
    "LocalKeyCache",
    "MemorySharedCache",
    "RedisSharedCache",
    "SharedKeyCache",
]


class CachedKey(msgspec.Struct, frozen=True):
    digest: bytes
    policy: KeyPolicy


class LocalKeyCache:
    """A bounded LRU of cached keys with a time to live, for one process."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, CachedKey]] = OrderedDict()

    def get(self, prefix: str) -> CachedKey | None:
        found = self._entries.get(prefix)
        if found is None:
            return None
        expires, entry = found
        if expires <= time.monotonic():
            del self._entries[prefix]
            return None
        return entry

    def put(self, prefix: str, entry: CachedKey) -> None:
        self._entries[prefix] = (time.monotonic() + self.ttl_s, entry)
        self._entries.move_to_end(prefix)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def evict(self, prefix: str) -> None:
        self._entries.pop(prefix, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class ExpiringSet:
    """Prefixes remembered for a while (the ones with no active key)."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._until: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, prefix: str) -> bool:
        until = self._until.get(prefix)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._until[prefix]
            return False
        return True

    def add(self, prefix: str) -> None:
        self._until[prefix] = time.monotonic() + self.ttl_s
        self._until.move_to_end(prefix)
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)

    def discard(self, prefix: str) -> None:
        self._until.pop(prefix, None)

    def clear(self) -> None:
        self._until.clear()


class SharedKeyCache(Protocol):
    async def get(self, prefix: str) -> CachedKey | None: ...
    async def put(self, prefix: str, entry: CachedKey) -> None: ...
    async def evict(self, prefix: str) -> None: ...


class MemorySharedCache:
    """The shared level in embedded mode: one process, so a second in-process map."""

    def __init__(self, ttl_s: float) -> None:
        self._cache = LocalKeyCache(ttl_s)

    async def get(self, prefix: str) -> CachedKey | None:
        return self._cache.get(prefix)

    async def put(self, prefix: str, entry: CachedKey) -> None:
        self._cache.put(prefix, entry)

    async def evict(self, prefix: str) -> None:
        self._cache.evict(prefix)


_encode: Final = msgspec.msgpack.Encoder().encode
_decode: Final = msgspec.msgpack.Decoder(CachedKey).decode


def redis_key(prefix: str) -> str:
    # Hash-tagged by key prefix: every Redis key of one API key lives in one slot.
    return f"gw:{{{prefix}}}:auth"


class RedisSharedCache:
    """The shared level in production. A Redis failure is a 503, never a bypass; so is
    no answer within ``deadline_s``."""

    def __init__(self, redis: Redis, ttl_s: float, deadline_s: float | None = None) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self.deadline_s = deadline_s

    async def get(self, prefix: str) -> CachedKey | None:
        try:
            async with asyncio.timeout(self.deadline_s):
                raw = await self.redis.get(redis_key(prefix))
        except (RedisError, TimeoutError) as exc:
            raise GatewayUnavailable(f"redis: {type(exc).__name__}") from None
        if raw is None:
            return None
        try:
            return _decode(raw if isinstance(raw, bytes) else raw.encode("latin-1"))
        except msgspec.DecodeError:
            # Written by an older gateway version: treat as a miss, verify again.
            return None

    async def put(self, prefix: str, entry: CachedKey) -> None:
        try:
            async with asyncio.timeout(self.deadline_s):
                await self.redis.set(redis_key(prefix), _encode(entry), px=self.ttl_ms)
        except (RedisError, TimeoutError) as exc:
            raise GatewayUnavailable(f"redis: {type(exc).__name__}") from None

    async def evict(self, prefix: str) -> None:
        try:
            await self.redis.delete(redis_key(prefix))
        except RedisError as exc:
            raise GatewayUnavailable(f"redis: {type(exc).__name__}") from None
