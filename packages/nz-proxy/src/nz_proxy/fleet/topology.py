"""Following the configured nodes and residency policies (SPEC §4.10, §4.12).

The topology (``gateway.backends`` and ``gateway.model_policies``, or the nodes of
``OLLAMA_BASE_URL(S)`` while the table is empty) is read at start and again whenever
it changes: PostgreSQL announces each change with ``pg_notify('backends_changed')``,
which a dedicated LISTEN connection hears; SQLite has no NOTIFY, so embedded mode reads
it every second. A LISTEN session also re-reads every 30 s, in case a notification was
lost with a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Final

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.backend_admin import load_topology
from nz_core.backends import Backend, Topology
from nz_proxy.fleet.fleet import Fleet

__all__ = ["TopologyFollower"]

log = structlog.get_logger("nz_proxy.fleet.topology")

CHANNEL: Final = "backends_changed"
POLL_S: Final = 1.0
RESYNC_S: Final = 30.0


class TopologyFollower:
    def __init__(
        self,
        engine: AsyncEngine,
        fleet: Fleet,
        configured: Sequence[Backend],
        dsn: str | None = None,
    ) -> None:
        self.engine = engine
        self.fleet = fleet
        self.configured = tuple(configured)
        self.dsn = dsn  # None: embedded mode, poll
        self.topology = Topology(backends=self.configured, configured=True)
        self._changed = asyncio.Event()

    async def sync(self) -> None:
        """Read the topology and apply it to the fleet."""
        topology = await load_topology(self.engine, self.configured)
        if topology != self.topology or not self.fleet.backends:
            await self.fleet.apply(topology.backends)
            if topology.backends != self.topology.backends:
                log.info("backends_applied", backends=[b.name for b in topology.backends])
        self.topology = topology

    async def poll_step(self) -> float:
        """Embedded mode (a supervised step)."""
        await self.sync()
        return POLL_S

    async def listen_step(self) -> float:
        """One LISTEN session (a supervised step): connect, read what changed while not
        listening, then re-read on every notification until the connection closes."""
        assert self.dsn is not None  # noqa: S101 - only scheduled with a DSN
        conn = await asyncpg.connect(
            self.dsn, timeout=5, server_settings={"application_name": "neuronetz-gateway topology"}
        )
        try:
            closed = asyncio.Event()
            conn.add_termination_listener(lambda _conn, done=closed: done.set())
            await conn.add_listener(CHANNEL, lambda *_: self._changed.set())
            await self.sync()
            while not closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), RESYNC_S)
                self._changed.clear()
                if not closed.is_set():
                    await self.sync()
        finally:
            if not conn.is_closed():
                conn.terminate()
        log.warning("topology_listener_disconnected")
        return 0.0
