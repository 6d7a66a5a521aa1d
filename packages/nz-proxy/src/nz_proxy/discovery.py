"""Model discovery (SPEC §4.6): what the backend has, polled, shared and kept hot.

A background task polls ``GET /api/tags`` every ``MODEL_DISCOVERY_REFRESH_S`` seconds
(every :data:`SILENT_POLL_S` while the backend does not answer; read-only: nothing else
is ever asked of the backend here), shares the list in Redis under
``gateway:models:discovered`` with a TTL, and keeps an in-process copy that every
request reads. A list older than ``MODEL_DISCOVERY_CACHE_TTL_S`` counts as unknown,
and an unknown list means an empty effective set: deny by design (with 502, since the
backend is why nothing is known, and a ``Retry-After`` of when the next poll will have
answered: clients that honour it, as the ``openai`` SDK does, come back when something
may have changed, not a minute later).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from nz_core.models import normalize_model
from nz_proxy.errors import GatewayError, UpstreamUnavailable
from nz_proxy.upstream import StreamBroken, Upstream

__all__ = [
    "SILENT_POLL_S",
    "Catalogue",
    "Discovery",
    "MemoryCatalogueStore",
    "RedisCatalogueStore",
]

log = structlog.get_logger("nz_proxy.discovery")

REDIS_KEY: Final = "gateway:models:discovered"
# While the backend does not answer, it is asked again this often: it is back within
# a couple of seconds of answering again.
SILENT_POLL_S: Final = 2.0


class Catalogue(msgspec.Struct, frozen=True):
    """The backend's models at one moment: ``/api/tags`` entries by normalised name."""

    fetched_at: float
    entries: dict[str, dict[str, Any]]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.entries)


def catalogue_from_tags(body: Mapping[str, Any], fetched_at: float) -> Catalogue:
    entries: dict[str, dict[str, Any]] = {}
    for entry in body.get("models") or []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model") or entry.get("name")
        if isinstance(name, str) and name:
            entries[normalize_model(name)] = entry
    return Catalogue(fetched_at=fetched_at, entries=entries)


class CatalogueStore(Protocol):
    async def load(self) -> Catalogue | None: ...
    async def save(self, catalogue: Catalogue) -> None: ...


class MemoryCatalogueStore:
    """Embedded mode: there is no one to share with."""

    async def load(self) -> Catalogue | None:
        return None

    async def save(self, catalogue: Catalogue) -> None:
        return None


_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder(Catalogue).decode


class RedisCatalogueStore:
    """One node's list, shared by the replicas (one key per node)."""

    def __init__(self, redis: Redis, ttl_s: float, key: str = REDIS_KEY) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self.key = key

    async def load(self) -> Catalogue | None:
        raw = await self.redis.get(self.key)
        if raw is None:
            return None
        try:
            return _decode(raw)
        except msgspec.DecodeError:
            return None

    async def save(self, catalogue: Catalogue) -> None:
        await self.redis.set(self.key, _encode(catalogue), px=self.ttl_ms)


class Discovery:
    def __init__(
        self,
        upstream: Upstream,
        store: CatalogueStore,
        *,
        refresh_s: float,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.store = store
        self.refresh_s = refresh_s
        self.ttl_s = ttl_s
        self.clock = clock
        self._catalogue: Catalogue | None = None
        # When the next poll is due (by `clock`), and how long the last one took.
        self._next_poll_at: float | None = None
        self._poll_s = 0.0

    def current(self) -> Catalogue | None:
        """The models known now, or ``None`` when the list is missing or too old."""
        catalogue = self._catalogue
        if catalogue is None or time.time() - catalogue.fetched_at >= self.ttl_s:
            return None
        return catalogue

    def require(self) -> Catalogue:
        """The models known now. With none known (the backend never answered, or not
        for longer than the TTL) nothing may be used, and the honest reason is the
        backend: a 502, identical whatever model was asked for.

        Raises:
            UpstreamUnavailable: the list is missing or too old.
        """
        catalogue = self.current()
        if catalogue is None:
            raise UpstreamUnavailable(retry_after_ms=self.retry_after_ms())
        return catalogue

    def interval(self, answered: bool) -> float:
        """Seconds from one poll to the next: sooner while the backend does not answer."""
        return self.refresh_s if answered else min(self.refresh_s, SILENT_POLL_S)

    def until_next_poll(self) -> float:
        """Seconds until the next poll is due (none yet: one silent interval)."""
        if self._next_poll_at is None:
            return self.interval(answered=False)
        return max(0.0, self._next_poll_at - self.clock())

    def retry_after_ms(self) -> int:
        """When a request refused for want of a list may succeed: once the next poll is
        due and has had as long as the last one took."""
        return max(1, round((self.until_next_poll() + self._poll_s) * 1000))

    def _adopt(self, catalogue: Catalogue) -> None:
        if self._catalogue is None or catalogue.fetched_at > self._catalogue.fetched_at:
            self._catalogue = catalogue

    async def refresh(self) -> bool:
        """Poll the backend once; on failure, take a fresher list another replica shared.

        Returns whether the backend answered.
        """
        started = self.clock()
        answered = await self._poll()
        finished = self.clock()
        self._poll_s = finished - started
        self._next_poll_at = finished + self.interval(answered)
        return answered

    async def _poll(self) -> bool:
        try:
            reply = await self.upstream.send("GET", "/api/tags", guarded=False)
            body = await reply.read()
            if reply.status != 200:
                raise StreamBroken(f"status {reply.status}")
            catalogue = catalogue_from_tags(msgspec.json.decode(body), time.time())
        except (GatewayError, StreamBroken, msgspec.DecodeError, AttributeError) as exc:
            log.warning("discovery_failed", error=type(exc).__name__)
            await self._load_shared()
            return False
        self._adopt(catalogue)
        try:
            await self.store.save(catalogue)
        except RedisError:
            log.warning("discovery_share_failed")
        return True

    async def _load_shared(self) -> None:
        try:
            shared = await self.store.load()
        except RedisError:
            return
        if shared is not None:
            self._adopt(shared)

    async def step(self) -> float:
        """Poll once (a supervised step); sooner again while the backend does not answer."""
        await self.refresh()
        return self.until_next_poll()
