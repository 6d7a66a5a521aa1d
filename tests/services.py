"""The real PostgreSQL and Redis the tests run against, and throwaway databases on them.

Tests never skip for want of a service: a missing server is a failure that says how to
start it, so CI cannot pass while testing nothing.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Final

import asyncpg
import sqlalchemy as sa

from nz_core.database import create_engine

PG_HOST: Final = os.environ.get("NZ_TEST_PG_HOST", "127.0.0.1")
PG_PORT: Final = int(os.environ.get("NZ_TEST_PG_PORT", "5432"))
PG_USER: Final = os.environ.get("NZ_TEST_PG_USER", "postgres")
REDIS_HOST: Final = os.environ.get("NZ_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT: Final = int(os.environ.get("NZ_TEST_REDIS_PORT", "6379"))

# The tests' own Redis database, flushed at the start of a session.
REDIS_DB: Final = int(os.environ.get("NZ_TEST_REDIS_DB", "11"))

START_PG: Final = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_REDIS: Final = (
    'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
)


class ServiceMissing(RuntimeError):
    """A server the tests need is not running."""


def require_port(name: str, host: str, port: int, how: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError:
        raise ServiceMissing(f"{name} is not reachable at {host}:{port}; start it: {how}") from None


def pg_url(database: str, *, driver: str = "postgresql+asyncpg") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


async def create_database(label: str) -> str:
    """Create an empty database with a unique name and return its name."""
    require_port("PostgreSQL", PG_HOST, PG_PORT, START_PG)
    name = f"nz_test_{label}_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def redis_url(db: int = REDIS_DB) -> str:
    require_port("Redis", REDIS_HOST, REDIS_PORT, START_REDIS)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def outbound_address() -> str:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 9))  # picks the outbound interface; sends nothing
        address: str = probe.getsockname()[0]
        return address
    finally:
        probe.close()


async def block_database(url_or_name: str, *, allow: bool) -> None:
    """Let nobody (or everybody again) connect to the database; cut who is connected."""
    database = url_or_name.rsplit("/", 1)[-1]
    engine = create_engine(pg_url("postgres"))
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("COMMIT"))
            await conn.execute(
                sa.text(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
            )
            if not allow:
                await conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"
                    ),
                    {"d": database},
                )
    finally:
        await engine.dispose()
