"""Authentication against the real PostgreSQL, SQLite and Redis (SPEC §3, §4.1-4.2)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.credentials import load_credentials
from nz_core.keys import DEFAULT_HASH_PROFILE, TEST_HASH_PROFILE, KeyHasher, generate_key
from nz_core.limits import Limits
from nz_proxy.auth import (
    ARGON2_THREADS,
    MAX_WAITING_VERIFICATIONS,
    Authenticator,
    FailureLimiter,
    presented_key,
)
from nz_proxy.errors import GatewayUnavailable, InvalidApiKey, VerificationBusy
from nz_proxy.keycache import (
    CachedKey,
    LocalKeyCache,
    MemorySharedCache,
    RedisSharedCache,
    SharedKeyCache,
)
from tests import services

CHEAP = KeyHasher(TEST_HASH_PROFILE)


@pytest.fixture
async def shared(database_url: str) -> AsyncIterator[SharedKeyCache]:
    """Redis beside PostgreSQL, the in-process level beside SQLite, as deployed."""
    if database_url.startswith("sqlite"):
        yield MemorySharedCache(60)
        return
    # A blocking pool, as the gateway has: a burst waits for a connection rather than
    # failing with redis-py's "Too many connections".
    client = aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(services.redis_url(), max_connections=20)
    )
    try:
        yield RedisSharedCache(client, 60)
    finally:
        await client.aclose()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HeldHasher(KeyHasher):
    """The cheap profile, but every verification waits in the argon2 thread until
    ``release`` is set: a burst can be held in flight."""

    def __init__(self) -> None:
        super().__init__(TEST_HASH_PROFILE)
        self.release = threading.Event()

    def verify(self, encoded: str, key: str) -> bool:
        self.release.wait(timeout=10)
        return super().verify(encoded, key)


def authenticator(
    engine: AsyncEngine,
    shared: SharedKeyCache,
    *,
    hasher: KeyHasher = CHEAP,
    clock: Clock | None = None,
    **limits: int,
) -> Authenticator:
    failures = FailureLimiter(**limits, clock=clock) if clock else FailureLimiter(**limits)
    return Authenticator(
        engine=engine, local=LocalKeyCache(30), shared=shared, hasher=hasher, failures=failures
    )


def wrong_secret(key: str) -> str:
    return key[:12] + generate_key()[12:]


async def outcome(auth: Authenticator, key: str, address: str | None) -> str:
    """What a client would see: ``ok``, ``401`` or ``busy`` (503 verification_busy)."""
    try:
        await auth.authenticate(key, address)
    except InvalidApiKey:
        return "401"
    except VerificationBusy as busy:
        wait = busy.retry_after_ms
    else:
        return "ok"
    assert wait is not None
    assert 1000 <= wait <= 60_000  # a Retry-After every client honours
    return "busy"


async def new_key(engine: AsyncEngine, **kwargs: object) -> str:
    tenant = f"auth-{uuid.uuid4().hex[:8]}"
    await admin.create_tenant(engine, tenant, limits=Limits(rpm=7))
    created = await admin.create_key(engine, tenant, "k", hasher=CHEAP, **kwargs)  # type: ignore[arg-type]
    return created.key


def test_presented_key_sources() -> None:
    host = (b"host", b"gateway")
    assert presented_key([host, (b"authorization", b"Bearer abc")]) == "abc"
    assert presented_key([(b"authorization", b"bearer   abc ")]) == "abc"
    assert presented_key([(b"x-api-key", b"abc"), host]) == "abc"
    assert presented_key([(b"authorization", b"Basic zzz")]) is None
    assert presented_key([(b"authorization", b"Bearer ")]) is None
    assert presented_key([(b"x-api-key", b"  ")]) is None
    assert presented_key([host]) is None
    # A mapping (no repeated header possible) reads the same.
    assert presented_key({b"authorization": b"Bearer abc"}) == "abc"
    assert presented_key({b"x-api-key": b"abc"}) == "abc"


def test_ambiguous_credentials_present_no_key() -> None:
    """SPEC §3: a proxy in front may have read the other header, so neither is used."""
    key = generate_key().encode()
    other = generate_key().encode()
    bearer = (b"authorization", b"Bearer " + key)
    for headers in (
        [bearer, (b"authorization", b"Bearer " + other)],
        [bearer, bearer],  # even twice the same: a header that must be single is not
        [(b"x-api-key", key), (b"x-api-key", other)],
        [bearer, (b"x-api-key", other)],
        [(b"x-api-key", other), bearer],
        [(b"authorization", b"Basic " + key), (b"x-api-key", key)],
        [(b"authorization", b"Bearer"), (b"x-api-key", key)],
        [(b"Authorization", b"Bearer " + key), (b"authorization", b"Bearer " + other)],
    ):
        assert presented_key(headers) is None, headers
    # Both kinds, one key: no ambiguity.
    assert presented_key([bearer, (b"x-api-key", key)]) == key.decode()
    assert presented_key([(b"x-api-key", b" " + key), (b"authorization", b"BEARER " + key)]) == (
        key.decode()
    )


# -- the limiter's rules, on a hand-moved clock -------------------------------------

P, Q = "nz_AAAAAAAAA", "nz_BBBBBBBBB"


def busy_ms(limiter: FailureLimiter, prefix: str, address: str | None) -> int | None:
    """None when a verification may start (its slots are given back at once), else the
    Retry-After in milliseconds."""
    try:
        limiter.reserve(prefix, address).release()
    except VerificationBusy as busy:
        return busy.retry_after_ms
    return None


def test_verifications_in_flight_hold_their_slots() -> None:
    limiter = FailureLimiter(per_prefix=3, clock=Clock())
    held = [limiter.reserve(P, None) for _ in range(3)]
    # No failure recorded yet, and still full: the check sees what is in flight.
    assert busy_ms(limiter, P, None) == 1000
    assert busy_ms(limiter, Q, None) is None
    held.pop().release()  # a success gives its slot back
    assert busy_ms(limiter, P, None) is None
    for attempt in held:
        attempt.release()
    assert limiter.tracked == 0  # successes leave nothing behind


def test_a_failure_keeps_its_slot_for_the_window_and_retry_after_says_until_when() -> None:
    clock = Clock()
    limiter = FailureLimiter(per_prefix=2, clock=clock)
    with limiter.reserve(P, None) as attempt:
        attempt.hash_failed()
    clock.now += 10
    with limiter.reserve(P, None) as attempt:
        attempt.hash_failed()
    clock.now += 5
    assert busy_ms(limiter, P, None) == 45_000  # the first failure leaves at t=60
    in_flight = limiter.reserve(Q, None)
    clock.now += 45
    assert busy_ms(limiter, P, None) is None
    with limiter.reserve(P, None) as attempt:  # found right: gives its slot back
        pass
    assert busy_ms(limiter, P, None) is None
    in_flight.release()
    clock.now += 10
    assert limiter.tracked == 1  # P's tally: its failures expired, pruned when next seen
    assert busy_ms(limiter, P, None) is None
    assert limiter.tracked == 0


def test_each_rule_refuses_on_its_own_subject() -> None:
    clock = Clock()
    limiter = FailureLimiter(
        per_prefix=4, per_pair=2, per_address=3, lookups_per_address=2, clock=clock
    )

    def fail(prefix: str, address: str) -> None:
        with limiter.reserve(prefix, address) as attempt:
            attempt.lookup_found()
            attempt.hash_failed()

    # (prefix, address): two failures, then that pair is spent, and only that pair.
    fail(P, "198.51.100.1")
    fail(P, "198.51.100.1")
    assert busy_ms(limiter, P, "198.51.100.1") == 60_000
    assert busy_ms(limiter, P, "198.51.100.2") is None
    assert busy_ms(limiter, Q, "198.51.100.1") is None
    # Prefix: four failures from anywhere spend it for every address.
    fail(P, "198.51.100.2")
    clock.now += 1
    fail(P, "198.51.100.3")
    assert busy_ms(limiter, P, "198.51.100.4") == 60_000 - 1000
    assert busy_ms(limiter, P, None) == 60_000 - 1000
    # Address: three failures over any prefixes spend it for every prefix.
    assert busy_ms(limiter, "nz_CCCCCCCCC", "198.51.100.1") is None
    fail(Q, "198.51.100.1")
    assert busy_ms(limiter, "nz_CCCCCCCCC", "198.51.100.1") == 60_000 - 1000
    # Lookups that found nothing, per address, apart from the argon2 failures.
    for _ in range(2):
        with limiter.reserve("nz_DDDDDDDDD", "203.0.113.1") as attempt:
            attempt.lookup_missed()
    assert busy_ms(limiter, "nz_EEEEEEEEE", "203.0.113.1") == 60_000
    assert busy_ms(limiter, "nz_EEEEEEEEE", "203.0.113.2") is None
    # Without a client address, only the prefix counts.
    assert busy_ms(limiter, "nz_DDDDDDDDD", None) is None


def test_the_longest_wait_of_the_refusing_rules_is_the_retry_after() -> None:
    clock = Clock()
    limiter = FailureLimiter(per_prefix=1, per_pair=1, per_address=1, clock=clock)
    with limiter.reserve(P, "198.51.100.1") as attempt:
        attempt.hash_failed()
    clock.now += 20
    with limiter.reserve(Q, "198.51.100.2") as attempt:
        attempt.hash_failed()
    clock.now += 1
    # P's failure frees its slot in 39 s, the address's own in 59 s: 59 s it is.
    assert busy_ms(limiter, P, "198.51.100.2") == 59_000


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


class CountedShared:
    """The real shared level, with its reads counted and, on demand, held."""

    def __init__(self, inner: SharedKeyCache) -> None:
        self.inner = inner
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def get(self, prefix: str) -> CachedKey | None:
        self.reads += 1
        await self.gate.wait()
        return await self.inner.get(prefix)

    async def put(self, prefix: str, entry: CachedKey) -> None:
        await self.inner.put(prefix, entry)

    async def evict(self, prefix: str) -> None:
        await self.inner.evict(prefix)


async def test_concurrent_requests_for_one_prefix_share_one_shared_cache_read(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    key = await new_key(engine)
    await authenticator(engine, shared).authenticate(key, None)  # another replica's work
    counted = CountedShared(shared)
    replica = authenticator(engine, counted)
    guesses = [wrong_secret(key) for _ in range(50)]
    answers = await asyncio.gather(
        *(outcome(replica, k, f"10.30.0.{i}") for i, k in enumerate([key, *guesses]))
    )
    assert answers == ["ok"] + ["401"] * 50  # refused on the digest, no argon2
    assert counted.reads == 1
    assert replica.verifications == 0


async def test_a_request_after_an_eviction_does_not_join_an_earlier_read(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    key = await new_key(engine)
    await authenticator(engine, shared).authenticate(key, None)
    counted = CountedShared(shared)
    replica = authenticator(engine, counted)
    counted.gate.clear()

    async def reads(count: int) -> None:
        while counted.reads < count:  # noqa: ASYNC110 - the read is held on purpose
            await asyncio.sleep(0.001)

    before = asyncio.ensure_future(replica.authenticate(key, None))
    await asyncio.wait_for(reads(1), 5)
    await replica.evict(key[:12])  # a revocation lands while that read is out
    after = asyncio.ensure_future(replica.authenticate(key, None))
    try:
        await asyncio.wait_for(reads(2), 5)  # it read again, not joined the earlier one
    finally:
        counted.gate.set()
    await asyncio.gather(before, after, return_exceptions=True)
    assert counted.reads == 2


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
    answers = [await outcome(auth, wrong_secret(key), None) for _ in range(10)]
    # Three argon2 runs, then refused before any: not verified, so not a 401.
    assert answers == ["401"] * 3 + ["busy"] * 7
    assert auth.verifications == 3
    by_address = authenticator(engine, shared, per_prefix=1000, per_address=2)
    victims = [await new_key(engine) for _ in range(3)]
    answers = [await outcome(by_address, wrong_secret(v), "203.0.113.7") for v in victims]
    assert answers == ["401", "401", "busy"]
    assert by_address.verifications == 2  # the third prefix was not even hashed
    other = await new_key(engine)
    # That address is spent: its next key is not verified, and not called wrong either.
    assert await outcome(by_address, other, "203.0.113.7") == "busy"
    assert (await by_address.authenticate(other, "203.0.113.8")).prefix == other[:12]


async def test_a_burst_of_wrong_secrets_on_one_prefix_runs_argon2_at_most_the_limit(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    """Issue 13.4: 200 simultaneous wrong secrets for one cold prefix, each from its
    own address, all in flight at once. Before, each passed the check while the others
    were still hashing; now a verification in flight holds its slot."""
    clock = Clock()
    hasher = HeldHasher()
    auth = authenticator(engine, shared, hasher=hasher, clock=clock)
    owner = await new_key(engine)
    burst = [
        asyncio.ensure_future(outcome(auth, wrong_secret(owner), f"10.20.{i // 250}.{i % 250}"))
        for i in range(200)
    ]
    try:
        while auth.limiter.statistics().tasks_waiting < 9:  # noqa: ASYNC110 - no event
            await asyncio.sleep(0.001)
        # The prefix's capacity is held by verifications in flight: the owner (another
        # address) is told to retry, not that the key is wrong.
        assert await asyncio.wait_for(outcome(auth, owner, "192.0.2.1"), 5) == "busy"
    finally:
        hasher.release.set()
        answers = await asyncio.gather(*burst)
    assert auth.verifications == 10  # the per-prefix limit, not 65 and not 200
    assert answers.count("401") == 10
    assert answers.count("busy") == 190
    # Ten failures spend the prefix for a minute: still busy, never 401, with the time.
    with pytest.raises(VerificationBusy) as busy:
        await auth.authenticate(owner, "192.0.2.1")
    assert 59_000 <= (busy.value.retry_after_ms or 0) <= 60_000
    clock.now += 60
    assert (await auth.authenticate(owner, "192.0.2.1")).prefix == owner[:12]
    assert auth.verifications == 11


async def test_a_correct_key_is_never_401_because_of_other_clients_failures(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    """Issue 13.5, with the default limits (10 per prefix, 5 per prefix and address,
    30 per address)."""
    auth = authenticator(engine, shared)
    owner = await new_key(engine)  # uncached throughout the guessing
    # Eleven wrong secrets from one address: five reach argon2, then that address is
    # turned away from the prefix; the owner elsewhere is still verified.
    answers = [await outcome(auth, wrong_secret(owner), "198.51.100.7") for _ in range(11)]
    assert answers == ["401"] * 5 + ["busy"] * 6
    assert (await auth.authenticate(owner, "192.0.2.10")).prefix == owner[:12]

    # Guessers at three addresses spend the prefix's capacity: its owner gets 503
    # verification_busy with a Retry-After, never the 401 that says "wrong key".
    spent = await new_key(engine)
    for address in ("198.51.100.21", "198.51.100.22", "198.51.100.23"):
        for _ in range(5):
            await outcome(auth, wrong_secret(spent), address)
    assert await outcome(auth, spent, "192.0.2.11") == "busy"

    # An address that failed 30 times (on six prefixes) is spent; another tenant's
    # uncached key behind that same address is not verified, and not called wrong.
    for victim in [await new_key(engine) for _ in range(6)]:
        for _ in range(5):
            assert await outcome(auth, wrong_secret(victim), "203.0.113.9") == "401"
    neighbour = await new_key(engine)
    assert await outcome(auth, neighbour, "203.0.113.9") == "busy"
    assert (await auth.authenticate(neighbour, "203.0.113.10")).prefix == neighbour[:12]


async def test_failures_per_prefix_and_address_do_not_block_another_address(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    auth = authenticator(engine, shared, per_pair=2)
    key = await new_key(engine)
    for _ in range(2):
        assert await outcome(auth, wrong_secret(key), "198.51.100.1") == "401"
    assert await outcome(auth, wrong_secret(key), "198.51.100.1") == "busy"
    assert await outcome(auth, key, "198.51.100.1") == "busy"  # that pair is spent
    assert auth.verifications == 2
    # Another address still gets its wrong secret checked (a real 401) and its key in.
    assert await outcome(auth, wrong_secret(key), "198.51.100.2") == "401"
    assert (await auth.authenticate(key, "198.51.100.2")).prefix == key[:12]
    assert auth.verifications == 4
    # And the spent address may still try its luck on other prefixes.
    other = await new_key(engine)
    assert (await auth.authenticate(other, "198.51.100.1")).prefix == other[:12]


async def test_a_full_verification_queue_is_busy_not_401(
    engine: AsyncEngine, shared: SharedKeyCache
) -> None:
    """More than ``MAX_WAITING_VERIFICATIONS`` waiting for the argon2 thread: the next
    one is turned away at once with 503 verification_busy, counted before the wait."""
    hasher = HeldHasher()
    big = 10 * MAX_WAITING_VERIFICATIONS
    auth = authenticator(engine, shared, hasher=hasher, per_prefix=big, per_pair=big)
    key = await new_key(engine)
    capacity = ARGON2_THREADS + MAX_WAITING_VERIFICATIONS
    held = [asyncio.ensure_future(outcome(auth, wrong_secret(key), None)) for _ in range(capacity)]
    try:
        while auth.limiter.statistics().tasks_waiting < MAX_WAITING_VERIFICATIONS:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        with pytest.raises(VerificationBusy) as busy:
            await asyncio.wait_for(auth.authenticate(key, None), 2)
        assert busy.value.retry_after_ms == 1000
    finally:
        hasher.release.set()
        answers = await asyncio.gather(*held)
    assert answers == ["401"] * capacity
    assert auth.verifications == capacity
    assert (await auth.authenticate(key, None)).prefix == key[:12]


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
        assert await outcome(auth, generate_key(), "198.51.100.2") == "401"
    late = await new_key(engine)
    # Not looked up, so not known to be wrong: 503, not the 401.
    assert await outcome(auth, late, "198.51.100.2") == "busy"
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
