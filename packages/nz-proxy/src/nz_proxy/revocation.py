"""Revocations and policy changes reach every replica within about a second (SPEC §4.5).

With PostgreSQL, :class:`ChangeListener` holds a dedicated asyncpg connection that
LISTENs on ``key_revoked`` and ``policy_changed`` and evicts the named key from both
cache levels. While that connection is down the per-process cache is emptied and not
used (an eviction could be missed); once it is back, the changes logged in the meantime
(``key_changes``) are evicted before the cache is trusted again.

In embedded mode there is no NOTIFY: :class:`ChangePoller` reads ``key_changes`` twice
a second instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import asyncpg
import structlog
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core.changes import changes_since, latest_change
from nz_proxy.auth import Authenticator
from nz_proxy.errors import GatewayUnavailable

__all__ = ["LISTENER_NAME", "ChangeListener", "ChangePoller"]

log = structlog.get_logger("nz_proxy.revocation")

CHANNELS: Final = ("key_revoked", "policy_changed")
# A dead connection is noticed by its termination callback, or at the latest by the
# keep-alive query that runs this often.
KEEPALIVE_S: Final = 2.0
# A verification that read the key just before the change may write the shared cache
# just after the first eviction; a second eviction a moment later removes it.
SECOND_EVICTION_S: Final = 0.5


LISTENER_NAME: Final = "neuronetz-gateway listener"


class _Evictor:
    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self.evictions = 0

    def schedule(self, prefix: str) -> None:
        self.auth.evict_local(prefix)  # at once, before any await
        self.auth.spawn(self._evict(prefix))

    async def _evict(self, prefix: str) -> None:
        self.evictions += 1
        for delay in (0.0, SECOND_EVICTION_S):
            await asyncio.sleep(delay)
            try:
                await self.auth.evict(prefix)
            except (GatewayUnavailable, RedisError):
                log.warning("eviction_failed", key_prefix=prefix)


class ChangeListener:
    def __init__(self, dsn: str, engine: AsyncEngine, auth: Authenticator) -> None:
        self.dsn = dsn
        self.engine = engine
        self.auth = auth
        self._evictor = _Evictor(auth)
        self.connected = asyncio.Event()
        self._caught_up_to: int | None = None

    def _notified(self, _conn: object, _pid: int, _channel: str, prefix: object) -> None:
        self._evictor.schedule(str(prefix))

    async def step(self) -> float:
        """One LISTEN session (a supervised step): connect, catch up on what changed
        while not listening, then listen until the connection closes. Until it is
        listening again the per-process cache is not used: an eviction could be missed."""
        self.auth.suspend_local()
        conn = await asyncpg.connect(
            self.dsn,
            timeout=5,
            # Named, so operators (and the fault tests) can find it in pg_stat_activity
            # among the pool's connections.
            server_settings={"application_name": LISTENER_NAME},
        )
        try:
            closed = asyncio.Event()
            conn.add_termination_listener(lambda _conn, done=closed: done.set())
            for channel in CHANNELS:
                await conn.add_listener(channel, self._notified)
            # Listening now; evict what changed while we were not.
            latest = await latest_change(self.engine)
            if self._caught_up_to is not None:
                for _, prefix in await changes_since(self.engine, self._caught_up_to):
                    self._evictor.schedule(prefix)
            self._caught_up_to = latest
            self.auth.resume_local()
            self.connected.set()
            log.info("change_listener_connected")
            while not closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), KEEPALIVE_S)
                if not closed.is_set():
                    await asyncio.wait_for(conn.execute("SELECT 1"), KEEPALIVE_S)
        finally:
            self.connected.clear()
            self.auth.suspend_local()
            if not conn.is_closed():
                conn.terminate()
        log.warning("change_listener_disconnected")
        return 0.0  # it was connected: reconnect at once


class ChangePoller:
    """Embedded mode: poll the change log (SQLite has no NOTIFY)."""

    def __init__(self, engine: AsyncEngine, auth: Authenticator, interval_s: float = 0.5) -> None:
        self.engine = engine
        self.auth = auth
        self.interval_s = interval_s
        self._evictor = _Evictor(auth)
        self._last: int | None = None

    async def step(self) -> float:
        """Evict what changed since the last poll (a supervised step). While polling
        fails the per-process cache is not used."""
        try:
            if self._last is None:
                self._last = await latest_change(self.engine)
            for change_id, prefix in await changes_since(self.engine, self._last):
                self._evictor.schedule(prefix)
                self._last = change_id
        except BaseException:
            self.auth.suspend_local()
            raise
        self.auth.resume_local()
        return self.interval_s
