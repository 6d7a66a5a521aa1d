"""The services one gateway process holds, built once by the composition root."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Final

import structlog
from redis.asyncio import Redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.credentials import KeyPolicy
from nz_core.errors import DatabaseUnreachable, MalformedKey
from nz_core.keys import parse_key
from nz_proxy.admission import Admission
from nz_proxy.admission.listing import ListingLimit
from nz_proxy.admission.stores import StateStore
from nz_proxy.audit import AuditWriter
from nz_proxy.auth import Authenticator, presented_key
from nz_proxy.exchange import Exchange
from nz_proxy.fleet.fleet import Fleet
from nz_proxy.fleet.topology import TopologyFollower
from nz_proxy.settings import Settings
from nz_proxy.supervisor import Job, Supervisor

log = structlog.get_logger("nz_proxy.gateway")

__all__ = ["Gateway"]

DATABASE_ERRORS: Final = (DatabaseUnreachable, SQLAlchemyError, OSError)


@dataclass(slots=True)
class Gateway:
    settings: Settings
    engine: AsyncEngine
    redis: Redis | None
    auth: Authenticator
    fleet: Fleet
    topology: TopologyFollower
    admission: Admission
    store: StateStore
    listing: ListingLimit
    audit: AuditWriter
    supervisor: Supervisor
    # Background work the composition root chose for this storage mode.
    jobs: list[Job] = field(default_factory=list)
    _in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Connect to the backends and start the background work."""
        self._idle.set()
        # The nodes and their first catalogues before serving: a fresh process knows the
        # models. A database not reachable yet leaves the configured nodes until it is.
        try:
            await self.topology.sync()
        except DATABASE_ERRORS as exc:
            log.warning("topology_unavailable", error=type(exc).__name__)
            await self.fleet.apply(self.topology.configured)
        for job in (
            # After a first poll that failed, the next comes in seconds, not a minute.
            Job("discovery", self.fleet.catalogue_step, first_after=self.fleet.until_next_poll()),
            Job("audit", self.audit.step, wake=self.audit.wake),
            *self.jobs,
        ):
            self.supervisor.start(job)

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count an admitted request until it is settled, for a graceful stop."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def stop(self, grace_s: float = 25.0) -> None:
        """Let admitted requests finish and settle, write the audit log and the ledger,
        then close everything (SIGTERM)."""
        if self._in_flight:
            log.info("draining", in_flight=self._in_flight)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        await self.supervisor.stop()
        await self.auth.close()
        await self.admission.close()
        await self.audit.drain(timeout_s=10.0)
        await self.fleet.close()
        await self.store.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()

    async def authenticate(
        self, exchange: Exchange, headers: Iterable[tuple[bytes, bytes]]
    ) -> KeyPolicy:
        """Authenticate the request and note who made it on the exchange.

        ``headers`` is the raw ASGI header list (``scope["headers"]``): a repeated
        ``Authorization`` must be seen to be refused (SPEC §3).
        """
        key = presented_key(headers)
        if key is not None:
            # A key that does not parse is audited without a prefix (SPEC §4.8).
            with suppress(MalformedKey):
                exchange.key_prefix = parse_key(key).prefix
                structlog.contextvars.bind_contextvars(key_prefix=exchange.key_prefix)
        policy = await self.auth.authenticate(key, exchange.client_ip)
        exchange.policy = policy
        return policy
