"""The composition root: settings in, a served ASGI application out.

:func:`build_gateway` wires the services for the configured storage mode (PostgreSQL
and Redis, or SQLite and in-process state); :func:`create_app` puts them behind
Litestar's routes; :func:`asgi_app` adds the outermost recording layer, and
:func:`app_from_env` is what Granian loads in every worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Final, cast

import sqlalchemy as sa
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from nz_core.database import create_engine, is_sqlite, normalize_url
from nz_core.keys import KeyHasher
from nz_proxy.admission.governor import Governor
from nz_proxy.admission.listing import ListingLimit, MemoryListingWindow, RedisListingWindow
from nz_proxy.admission.stores import StateStore
from nz_proxy.admission.stores.memory import MemoryStore
from nz_proxy.admission.stores.redis import RedisStore
from nz_proxy.audit import AuditWriter
from nz_proxy.auth import Authenticator
from nz_proxy.breaker import CircuitBreaker
from nz_proxy.discovery import REDIS_KEY as CATALOGUE_KEY
from nz_proxy.discovery import CatalogueStore, MemoryCatalogueStore, RedisCatalogueStore
from nz_proxy.errors import (
    EndpointBlocked,
    GatewayError,
    MethodNotAllowed,
    RouteNotFound,
    Surface,
    render,
)
from nz_proxy.exchange import exchange_of, surface_of
from nz_proxy.fleet.fleet import Fleet
from nz_proxy.fleet.inflight import MemoryInFlight, RedisInFlight
from nz_proxy.fleet.topology import POLL_S, TopologyFollower
from nz_proxy.gateway import Gateway
from nz_proxy.keycache import LocalKeyCache, MemorySharedCache, RedisSharedCache
from nz_proxy.logs import configure_logging
from nz_proxy.maintenance import reap_step, sweep_step
from nz_proxy.metrics import FleetMetrics, Metrics, background_failed
from nz_proxy.recorder import Recorder
from nz_proxy.revocation import ChangeListener, ChangePoller
from nz_proxy.routes import ollama, openai, system
from nz_proxy.settings import Settings, load_settings
from nz_proxy.supervisor import Job, Supervisor
from nz_proxy.types import ASGIApp, AsgiScope
from nz_proxy.upstream import Upstream

__all__ = ["app_from_env", "asgi_app", "build_gateway", "create_app"]

# The per-process key cache is short-lived (SPEC §4.2): evictions reach it by NOTIFY,
# and this bounds how long it can drift from the shared level otherwise.
LOCAL_KEY_CACHE_TTL_S: Final = 30.0
# Fail closed fast (SPEC §3): a frozen Redis is a 503 within a second. A request's first
# Redis call waits at most POOL_WAIT (for a free connection) plus TIMEOUT (for the
# answer); it is never retried after a timeout, so no request waits twice.
REDIS_TIMEOUT_S: Final = 0.5
REDIS_POOL_WAIT_S: Final = 0.25
# However the time goes (a free connection, a fresh connection's handshake, a retry),
# no request waits longer than this for one answer from Redis.
REDIS_DEADLINE_S: Final = 0.75


def build_gateway(settings: Settings, *, upstream: Upstream | None = None) -> Gateway:
    """The services for ``settings``; nothing connects until :meth:`Gateway.start`.

    ``upstream`` replaces the client of every backend node (tests pass one in front of
    a fake backend, as httpx's ``MockTransport`` is passed to a client)."""
    engine = create_engine(settings.database_url)
    redis = (
        # from_pool: the client owns the pool, so closing the client closes it.
        Redis.from_pool(
            BlockingConnectionPool.from_url(
                settings.redis_url,
                # More requests than connections wait for one (redis-py's plain pool
                # raises instead: a burst of 101 streams would get 503s).
                max_connections=settings.redis_max_connections,
                timeout=REDIS_POOL_WAIT_S,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
                # After Redis restarts, each pooled connection is dead until used once;
                # one immediate retry on a fresh connection spares those requests a
                # 503. A Redis that is down still fails at once, and timeouts are not
                # retried (redis-py retries them by default: 1.5 s for a frozen Redis).
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
        )
        if settings.redis_url
        else None
    )
    store: StateStore = (
        RedisStore(redis, deadline_s=REDIS_DEADLINE_S) if redis is not None else MemoryStore()
    )
    listing_window = (
        RedisListingWindow(redis, deadline_s=REDIS_DEADLINE_S)
        if redis is not None
        else MemoryListingWindow()
    )
    audit = AuditWriter(engine, store, settings.zone, capacity=settings.audit_buffer_rows)
    governor = Governor(store, engine, audit, settings)
    shared_cache = (
        RedisSharedCache(redis, settings.key_cache_ttl_s, REDIS_DEADLINE_S)
        if redis is not None
        else MemorySharedCache(settings.key_cache_ttl_s)
    )
    auth = Authenticator(
        engine=engine,
        local=LocalKeyCache(min(settings.key_cache_ttl_s, LOCAL_KEY_CACHE_TTL_S)),
        shared=shared_cache,
        hasher=KeyHasher(),
    )

    def connect(url: str) -> Upstream:
        if upstream is not None:
            return upstream
        return Upstream(
            url,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            read_timeout_s=settings.upstream_read_timeout_s,
            breaker=CircuitBreaker(
                settings.circuit_breaker_failures, settings.circuit_breaker_reset_s
            ),
        )

    def catalogue_store(node: str) -> CatalogueStore:
        if redis is None:
            return MemoryCatalogueStore()
        return RedisCatalogueStore(
            redis, settings.model_discovery_cache_ttl_s, f"{CATALOGUE_KEY}:{node}"
        )

    inflight = RedisInFlight(redis) if redis is not None else MemoryInFlight()
    fleet = Fleet(
        connect,
        inflight,
        catalogue_store,
        refresh_s=settings.model_discovery_refresh_s,
        ttl_s=settings.model_discovery_cache_ttl_s,
        lease_ms=int(settings.concurrency_lease_s * 1000),
    )
    sqlite = is_sqlite(settings.database_url)
    topology = TopologyFollower(
        engine,
        fleet,
        settings.configured_backends,
        dsn=None if sqlite else asyncpg_dsn(settings.database_url),
    )
    lease_s = settings.concurrency_lease_s
    jobs = [
        Job("lease-renewal", governor.renew_step, first_after=lease_s / 3),
        Job("sweeper", partial(sweep_step, engine)),
        Job("residency", partial(fleet.residency_step, settings.backend_ps_refresh_s)),
        Job("backend-leases", fleet.renew_step, first_after=lease_s / 3),
        Job("fleet-metrics", FleetMetrics(fleet).step),
        Job("inflight-share", inflight.sync),
        Job(
            "topology",
            topology.poll_step if sqlite else topology.listen_step,
            first_after=POLL_S if sqlite else 0.0,
            interruptible=not sqlite,
        ),
    ]
    if redis is not None:
        jobs.append(
            Job(
                "reaper",
                partial(reap_step, store, audit, lease_s, settings.audit_journal_grace_s),
                first_after=lease_s / 2,
            )
        )
        jobs.append(Job("settlement-replay", governor.backlog.step))
    if sqlite:
        jobs.append(Job("revocation", ChangePoller(engine, auth).step))
    else:
        listener = ChangeListener(asyncpg_dsn(settings.database_url), engine, auth)
        jobs.append(Job("revocation", listener.step, interruptible=True))
    return Gateway(
        settings=settings,
        engine=engine,
        redis=redis,
        auth=auth,
        fleet=fleet,
        topology=topology,
        admission=governor,
        store=store,
        listing=ListingLimit(listing_window, settings.listing_rpm),
        audit=audit,
        supervisor=Supervisor(on_failure=background_failed),
        jobs=jobs,
    )


def asyncpg_dsn(url: str) -> str:
    """The database URL as asyncpg's own ``connect`` takes it (for LISTEN)."""
    parsed = sa.make_url(normalize_url(url)).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def _error_response(request: Request[object, object, State], exc: Exception) -> Response[bytes]:
    """Errors Litestar itself raises (no route, wrong method), in the surface's shape."""
    error: GatewayError
    surface = surface_of(request.url.path)
    if isinstance(exc, NotFoundException) and request.url.path.lower().startswith("/api/"):
        # `/API/PULL` is refused as `/api/pull` is: no spelling of /api reaches a 404.
        error, surface = EndpointBlocked(), Surface.OLLAMA
        exchange = exchange_of(cast("AsgiScope", request.scope))
        exchange.endpoint = "/api/*"
        exchange.failed(error)
    elif isinstance(exc, NotFoundException):
        error = RouteNotFound()
    elif isinstance(exc, MethodNotAllowedException):
        error = MethodNotAllowed(("GET", "HEAD"))
    elif isinstance(exc, HTTPException):
        error = GatewayError(exc.detail)
        error.status = exc.status_code
    else:
        error = GatewayError("Internal error.")
    return Response(
        render(error, surface),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers(),
    )


def create_app(settings: Settings, gateway: Gateway | None = None) -> Litestar:
    gateway = gateway or build_gateway(settings)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    return Litestar(
        route_handlers=[*openai.ROUTES, *ollama.ROUTES, *system.ROUTES],
        lifespan=[lifespan],
        state=State({"gateway": gateway}),
        exception_handlers={HTTPException: _error_response, Exception: _error_response},
        openapi_config=None,
        debug=False,
    )


def asgi_app(settings: Settings, gateway: Gateway | None = None) -> ASGIApp:
    """The application as served: Litestar inside the request recorder, whose every
    finished request becomes a log line, an audit row and metrics."""
    gateway = gateway or build_gateway(settings)
    metrics = Metrics(
        audit_waiting=lambda: gateway.audit.waiting,
        verifications=lambda: gateway.auth.verifications,
        audit_lost=lambda: gateway.audit.lost,
    )
    # Litestar types its ASGI events precisely; the recorder only passes them through.
    litestar = cast("ASGIApp", create_app(settings, gateway))
    return Recorder(
        litestar,
        trusted=settings.networks(),
        observers=[gateway.audit.observe, metrics.observe],
    )


def app_from_env() -> ASGIApp:
    """Granian's factory target: every worker builds its own from the environment."""
    settings = load_settings()
    configure_logging(settings)
    return asgi_app(settings)
