"""Authentication against the real PostgreSQL, SQLite and Redis (SPEC §3, §4.1-4.2)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.credentials import load_credentials
from nz_core.keys import DEFAULT_HASH_PROFILE, TEST_HASH_PROFILE, KeyHasher, generate_key
from nz_core.limits import Limits
from nz_proxy.auth import Authenticator, FailureLimiter, presented_key
from nz_proxy.errors import GatewayUnavailable, InvalidApiKey
from nz_proxy.keycache import LocalKeyCache, MemorySharedCache, RedisSharedCache, SharedKeyCache
from tests import services

CHEAP = KeyHasher(TEST_HASH_PROFILE)


@pytest.fixture
async def shared(database_url: str) -> AsyncIterator[SharedKeyCache]:
    """Redis beside PostgreSQL, the in-process level beside SQLite, as deployed."""
    if database_url.startswith("sqlite"):
        yield MemorySharedCache(60)
        return
    client = aioredis.Redis.from_url(services.redis_url())
    try:
        yield RedisSharedCache(client, 60)
    finally:
        await client.aclose()


def authenticator(engine: AsyncEngine, shared: SharedKeyCache, **limits: int) -> Authenticator:
    return Authenticator(
        engine=engine,
        local=LocalKeyCache(30),
        shared=shared,
        hasher=CHEAP,
        failures=FailureLimiter(**limits) if limits else None,
    )


async def new_key(engine: AsyncEngine, **kwargs: object) -> str:
    tenant = f"auth-{uuid.uuid4().hex[:8]}"
    await admin.create_tenant(engine, tenant, limits=Limits(rpm=7))
    created = await admin.create_key(engine, tenant, "k", hasher=CHEAP, **kwargs)  # type: ignore[arg-type]
    return created.key


def test_presented_key_sources() -> None:
    assert presented_key({b"authorization": b"Bearer abc"}) == "abc"
    assert presented_key({b"authorization": b"bearer   abc "}) == "abc"
    assert presented_key({b"x-api-key": b"abc"}) == "abc"
    assert presented_key({b"authorization": b"Basic zzz", b"x-api-key": b"abc"}) == "abc"
    assert presented_key({b"authorization": b"Basic zzz"}) is None
    assert presented_key({}) is None


async def test_a_good_key_verifies_once_then_comes_from_the_cache(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    auth = authenticator(engine, shared)
    key = await new_key(engine)
    policy = await auth.authenticate(key, "10.0.0.1")
    assert policy.prefix == key[:12]
    assert policy.limits.rpm == 7
    for _ in range(5):
        assert (await auth.authenticate(key, "10.0.0.1")) == policy
    assert auth.verifications == 1
    # Another replica: empty per-process level, same shared level, no argon2.
    replica = authenticator(engine, shared)
    assert (await replica.authenticate(key, "10.0.0.2")) == policy
    assert replica.verifications == 0


async def test_concurrent_misses_share_one_verification(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    auth = authenticator(engine, shared)
    key = await new_key(engine)
    results = await asyncio.gather(*(auth.authenticate(key, None) for _ in range(20)))
    assert len({r.key_id for r in results}) == 1
    assert auth.verifications == 1


async def test_wrong_secret_for_a_cached_prefix_costs_no_argon2(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    auth = authenticator(engine, shared)
    key = await new_key(engine)
    await auth.authenticate(key, None)
    for _ in range(50):
        with pytest.raises(InvalidApiKey):
            await auth.authenticate(key[:12] + generate_key()[12:], "10.9.9.9")
    assert auth.verifications == 1
    # The owner of the cached key is not locked out by someone else's failures.
    assert (await auth.authenticate(key, "10.0.0.1")).prefix == key[:12]


async def test_failed_verifications_are_limited_before_hashing(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    auth = authenticator(engine, shared, per_prefix=3, per_address=1000)
    key = await new_key(engine)  # never verified, so never cached
    for _ in range(10):
        with pytest.raises(InvalidApiKey):
            await auth.authenticate(key[:12] + generate_key()[12:], None)
    assert auth.verifications == 3  # then refused before any argon2 run
    by_address = authenticator(engine, shared, per_prefix=1000, per_address=2)
    for _ in range(3):
        victim = await new_key(engine)
        with pytest.raises(InvalidApiKey):
            await by_address.authenticate(victim[:12] + generate_key()[12:], "203.0.113.7")
    assert by_address.verifications == 2  # the third prefix was not even hashed
    other = await new_key(engine)
    with pytest.raises(InvalidApiKey):
        await by_address.authenticate(other, "203.0.113.7")  # that address is blocked
    assert (await by_address.authenticate(other, "203.0.113.8")).prefix == other[:12]


async def test_lookups_of_absent_keys_are_cached_and_limited(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    auth = authenticator(engine, shared, lookups_per_address=3)
    revoked = await new_key(engine)
    await admin.revoke_key(engine, revoked[:12])
    # A client retrying a revoked key: one lookup, then remembered as absent.
    for _ in range(50):
        with pytest.raises(InvalidApiKey):
            await auth.authenticate(revoked, "198.51.100.1")
    good = await new_key(engine)
    assert (await auth.authenticate(good, "198.51.100.1")).prefix == good[:12]
    # Random prefixes cost a lookup each: limited per address.
    for _ in range(3):
        with pytest.raises(InvalidApiKey):
            await auth.authenticate(generate_key(), "198.51.100.2")
    late = await new_key(engine)
    with pytest.raises(InvalidApiKey):
        await auth.authenticate(late, "198.51.100.2")
    assert (await auth.authenticate(late, "198.51.100.3")).prefix == late[:12]
    assert auth.verifications == 2


@pytest.mark.parametrize("text", [None, "", "nz_", "Bearer", "nz_" + "!" * 52, "x" * 500])
async def test_malformed_keys_touch_nothing(
    engine: AsyncEngine, shared: SharedKeyCache, text: str | None
) -> None:
    auth = authenticator(engine, shared)
    with pytest.raises(InvalidApiKey):
        await auth.authenticate(text, None)
    assert auth.verifications == 0


async def test_revoked_and_evicted_keys_are_refused(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    auth = authenticator(engine, shared)
    key = await new_key(engine)
    await auth.authenticate(key, None)
    await admin.revoke_key(engine, key[:12])
    await auth.evict(key[:12])  # what the revocation listener does
    with pytest.raises(InvalidApiKey):
        await auth.authenticate(key, None)
    assert await load_credentials(engine, key[:12]) is None


async def test_a_verification_that_races_an_eviction_is_not_cached(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    auth = authenticator(engine, shared)
    key = await new_key(engine)
    # Hold the only argon2 slot: the verification reads the key, then waits to hash.
    await auth.limiter.acquire()
    verifying = asyncio.ensure_future(auth.authenticate(key, None))
    while auth.limiter.statistics().tasks_waiting == 0:  # noqa: ASYNC110 - no event to wait on
        await asyncio.sleep(0.001)
    await auth.evict(key[:12])  # a revocation lands mid-verification
    auth.limiter.release()
    await verifying
    assert auth.local.get(key[:12]) is None
    assert await shared.get(key[:12]) is None


async def test_suspended_local_level_is_bypassed(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    auth = authenticator(engine, shared)
    key = await new_key(engine)
    await auth.authenticate(key, None)
    auth.suspend_local()
    assert len(auth.local) == 0
    await auth.authenticate(key, None)
    assert len(auth.local) == 0  # not refilled while suspended
    auth.resume_local()
    await auth.authenticate(key, None)
    assert len(auth.local) == 1


async def test_outdated_hash_parameters_are_upgraded_on_verify(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    auth = Authenticator(
        engine=engine,
        local=LocalKeyCache(30),
        shared=shared,
        hasher=KeyHasher(DEFAULT_HASH_PROFILE),
    )
    key = await new_key(engine)  # hashed with the cheap test profile
    await auth.authenticate(key, None)
    for _ in range(100):
        credentials = await load_credentials(engine, key[:12])
        assert credentials is not None
        if not auth.hasher.needs_rehash(credentials.hash):
            break
        await asyncio.sleep(0.05)
    assert "m=19456,t=2,p=1" in credentials.hash
    assert auth.hasher.verify(credentials.hash, key)


async def test_an_unreachable_database_is_a_503(shared: SharedKeyCache) -> None:
    from nz_core.database import create_engine

    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    try:
        auth = authenticator(engine, MemorySharedCache(60))
        with pytest.raises(GatewayUnavailable):
            await auth.authenticate(generate_key(), None)
    finally:
        await engine.dispose()


async def test_an_unreachable_redis_is_a_503(engine: AsyncEngine) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        auth = authenticator(engine, RedisSharedCache(client, 60))
        key = await new_key(engine)
        with pytest.raises(GatewayUnavailable):
            await auth.authenticate(key, None)
    finally:
        await client.aclose()
