"""Liveness and readiness (SPEC §5): ``/healthz`` says the process runs; ``/readyz``
says whether it can serve, naming each dependency that failed."""

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
    reply = await gateway.upstream.send("GET", "/api/version", guarded=False)
    await reply.read()
    if reply.status >= 500:
        raise GatewayError("backend failing")


async def readiness(gateway: Gateway) -> tuple[bool, dict[str, str]]:
    """(ready, {dependency: "ok" | "unreachable" | "not used"})."""
    database, state, backend = await asyncio.gather(
        _bounded(_database(gateway)),
        _bounded(_redis(gateway)) if gateway.redis is not None else _not_used(),
        _bounded(_backend(gateway)),
    )
    checks = {"database": database, "state_store": state, "backend": backend}
    return all(value != "unreachable" for value in checks.values()), checks


async def _not_used() -> str:
    return "in-process"
