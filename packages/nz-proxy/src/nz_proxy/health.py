"""Liveness and readiness (SPEC §5): ``/healthz`` says the process runs; ``/readyz``
says whether it can serve, naming each dependency that failed, and whether the audit
backlog drains (SPEC §3: a writer stuck on anything is not ready) and whether the
background jobs run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Final

import sqlalchemy as sa
from redis.exceptions import RedisError

from nz_core.database import UNREACHABLE_ERRORS
from nz_proxy.errors import GatewayError
from nz_proxy.gateway import Gateway

__all__ = ["readiness"]

# A readiness probe must answer quickly even while a dependency hangs.
CHECK_TIMEOUT_S: Final = 1.5


async def _bounded(check: Awaitable[None]) -> str:
    try:
        await asyncio.wait_for(check, CHECK_TIMEOUT_S)
    except (TimeoutError, *UNREACHABLE_ERRORS, RedisError, GatewayError):
        return "unreachable"
    return "ok"


async def _database(gateway: Gateway) -> None:
    async with gateway.engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


async def _redis(gateway: Gateway) -> None:
    if gateway.redis is not None:
        await gateway.redis.ping()


async def _backend(gateway: Gateway) -> None:
    """Ready while one node can serve (the others' requests go to it)."""
    nodes = gateway.fleet.usable()
    replies = await asyncio.gather(
        *(b.upstream.send("GET", "/api/version", guarded=False) for b in nodes),
        return_exceptions=True,
    )
    healthy = False
    for reply in replies:
        if isinstance(reply, BaseException):
            if not isinstance(reply, GatewayError):
                raise reply
            continue
        await reply.read()
        healthy = healthy or reply.status < 500
    if not healthy:
        raise GatewayError("backend failing")


async def readiness(gateway: Gateway) -> tuple[bool, dict[str, str]]:
    """(ready, {dependency: "ok" | "unreachable" | "in-process", "audit": "ok" |
    "stalled", "background": "ok" | "failing"})."""
    database, state, backend = await asyncio.gather(
        _bounded(_database(gateway)),
        _bounded(_redis(gateway)) if gateway.redis is not None else _not_used(),
        _bounded(_backend(gateway)),
    )
    # The audit is stalled when rows have waited AuditWriter.stall_after_s (10 s, two
    # full backoff periods) without one successful write although the database answers
    # here: the writer is stuck (a lock, an error it cannot get past, a dead loop), and
    # once its buffer fills every request gets 503. With the database away, the
    # "database" check already says why nothing drains.
    audit = "stalled" if database == "ok" and gateway.audit.stalled() else "ok"
    # A background job that crashes at every step (a bug, not a dependency down) leaves
    # the process without, say, revocation or audit writing: not ready.
    background = "failing" if gateway.supervisor.dying else "ok"
    checks = {
        "database": database,
        "state_store": state,
        "backend": backend,
        "audit": audit,
        "background": background,
    }
    ready = all(value not in ("unreachable", "stalled", "failing") for value in checks.values())
    return ready, checks


async def _not_used() -> str:
    return "in-process"
