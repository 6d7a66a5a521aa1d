"""The services one gateway process holds, built once by the composition root."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.credentials import KeyPolicy
from nz_core.errors import MalformedKey
from nz_core.keys import parse_key
from nz_proxy.admission import Admission
from nz_proxy.auth import Authenticator, presented_key
from nz_proxy.discovery import Discovery
from nz_proxy.exchange import Exchange
from nz_proxy.settings import Settings
from nz_proxy.upstream import Upstream

__all__ = ["Gateway"]


@dataclass(slots=True)
class Gateway:
    settings: Settings
    engine: AsyncEngine
    redis: Redis | None
    auth: Authenticator
    discovery: Discovery
    upstream: Upstream
    admission: Admission
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Open the backend session and start the background work."""
        await self.upstream.start()
        # The first discovery runs before serving: a fresh process knows the models.
        await self.discovery.refresh()
        self._tasks.append(asyncio.create_task(self.discovery.run(), name="discovery"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.upstream.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()

    async def authenticate(self, exchange: Exchange, headers: Mapping[bytes, bytes]) -> KeyPolicy:
        """Authenticate the request and note who made it on the exchange."""
        key = presented_key(headers)
        if key is not None:
            # A key that does not parse is audited without a prefix (SPEC §4.8).
            with suppress(MalformedKey):
                exchange.key_prefix = parse_key(key).prefix
        policy = await self.auth.authenticate(key, exchange.client_ip)
        exchange.policy = policy
        return policy
