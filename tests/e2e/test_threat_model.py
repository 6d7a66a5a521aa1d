"""SPEC §3, row by row: each test here fails if the mitigation it names were removed.

These close the gaps the other suites leave (docs/THREAT_MODEL.md maps every row of
SPEC §3 to its tests). Most run a real gateway against the mock Ollama, in the storage
mode where the property is decided; the argon2 scheduling test drives the
authenticator directly, because only there can a verification be held mid-flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import socket
import string
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.database import connect, create_engine
from nz_core.errors import InvalidValue, KeyNotFound
from nz_core.keys import KEY_LENGTH, PREFIX_LENGTH, KeyHasher, generate_key
from nz_core.limits import Limits
from nz_core.migrations import upgrade
from nz_core.schema import api_keys, audit_log
from nz_mock_ollama.cli import parse_args as parse_mock_args
from nz_proxy.auth import MAX_WAITING_VERIFICATIONS, Authenticator, FailureLimiter
from nz_proxy.errors import InvalidApiKey, VerificationBusy, wait_in_words
from nz_proxy.keycache import LocalKeyCache, MemorySharedCache, redis_key
from nz_proxy.settings import load_settings
from tests import services
from tests.e2e.conftest import HASHER, Deployment, RigFactory, gateway_env
from tests.processes import private_redis, run_mock, running_gateway

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}]}
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
# Headers that differ between any two responses, whatever they answer: the request's
# own id, the clock, and whether Granian keeps the connection (it may close one whose
# body the gateway did not read, timing-dependent and the same for any refusal).
PER_RESPONSE = frozenset({"x-request-id", "date", "connection"})
OWASP_PARAMETERS = "m=19456,t=2,p=1"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def shape(response: httpx.Response) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    """What a client can compare between two answers: status, body and every header
    except the ones that name the request itself."""
    headers = tuple(
        sorted((k.lower(), v) for k, v in response.headers.items() if k.lower() not in PER_RESPONSE)
    )
    return response.status_code, response.content, headers


def fragments(secret: str, size: int = 16) -> list[str]:
    """Every ``size``-character window of ``secret``: a truncated or partly masked copy
    still leaks one of them."""
    return [secret[i : i + size] for i in range(max(1, len(secret) - size + 1))]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus sample over every series whose labels include ``labels``."""
    total = 0.0
    wanted = [f'{label}="{value}"' for label, value in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        if all(item in line for item in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def verifications(gateway_url: str) -> float:
    """argon2 runs so far (the gateway's own counter). Observers run just after the
    response is sent, so give the last request's a moment first."""
    time.sleep(0.2)
    return metric(httpx.get(gateway_url + "/metrics").text, "gateway_key_verifications_total")


def mock_requests(mock_url: str) -> dict[str, int]:
    requests: dict[str, int] = httpx.get(mock_url + "/_mock/stats").json()["requests"]
    return requests


def forwarded(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Requests the backend received in between, the gateway's own polling aside
    (discovery's ``/api/tags``, residency's ``/api/ps``)."""
    return {
        path: count - before.get(path, 0)
        for path, count in after.items()
        if path not in ("/api/tags", "/api/ps") and count != before.get(path, 0)
    }


def raw_http(
    base_url: str, method: str, target: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, bytes]:
    """One HTTP/1.1 request with the request target exactly as given (httpx would
    normalise dot segments and case): (status, body)."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None
    assert parts.port is not None
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        + "\r\n"
    )
    chunks = []
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + body)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


async def audit_row(engine: AsyncEngine, request_id: str) -> sa.Row[Any]:
    """The audit row of one request, once the batched writer has flushed it."""
    deadline = time.monotonic() + 10
    while True:
        async with connect(engine) as conn:
            row = (
                await conn.execute(sa.select(audit_log).where(audit_log.c.request_id == request_id))
            ).first()
        if row is not None:
            return row
        assert time.monotonic() < deadline, f"no audit row for {request_id}"
        await asyncio.sleep(0.1)


async def dump_database(engine: AsyncEngine) -> str:
    """Every row of every table, as a stolen dump would hold them (bytes also in hex)."""

    def read(sync_conn: sa.Connection) -> str:
        schema = None if sync_conn.dialect.name == "sqlite" else "gateway"
        meta = sa.MetaData()
        meta.reflect(sync_conn, schema=schema)
        assert "api_keys" in {table.name for table in meta.sorted_tables}
        lines = []
        for table in meta.sorted_tables:
            for row in sync_conn.execute(sa.select(table)):
                values = [v.hex() if isinstance(v, bytes) else str(v) for v in row]
                lines.append(f"{table.name}: " + " | ".join(values))
        return "\n".join(lines)

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def dump_redis(url: str) -> dict[bytes, bytes]:
    """Every Redis key of the database at ``url`` with everything stored under it."""
    client = aioredis.Redis.from_url(url)
    dump: dict[bytes, bytes] = {}
    try:
        async for name in client.scan_iter(count=1000):
            kind = await client.type(name)
            parts: list[Any] = []
            if kind == b"string":
                parts.append(await client.get(name))
            elif kind == b"hash":
                for field, value in (await client.hgetall(name)).items():
                    parts += [field, value]
            elif kind == b"zset":
                parts += list(await client.zrange(name, 0, -1))
            elif kind == b"list":
                parts += await client.lrange(name, 0, -1)
            elif kind == b"set":
                parts += list(await client.smembers(name))
            elif kind == b"stream":
                entries: Any = await client.xrange(name)
                for _, fields in entries:
                    for field, value in fields.items():
                        parts += [field, value]
            dump[name] = b"\x00".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
    finally:
        await client.aclose()
    return dump


# -- stolen database dump ---------------------------------------------------------------


async def test_a_dump_of_the_database_and_redis_holds_no_usable_key(
    deployment: Deployment,
) -> None:
    """After real traffic (cache fills, a rehash, prompt logging, failures, a
    revocation), nothing in the database or in Redis is the key or a fast hash of it:
    only argon2id hashes with the OWASP parameters."""
    good = await deployment.key(models=["llama3.2", "all-minilm"])
    revoked = await deployment.key(models=["llama3.2"])
    await admin.set_prompt_log(deployment.engine, good[:12], enabled=True, retention_days=1)
    opted_in_at = time.monotonic()
    wrong = good[:12] + generate_key()[12:]
    with httpx.Client(base_url=deployment.url, timeout=10) as client:
        for headers in (bearer(good), {"x-api-key": good}):
            assert client.post("/v1/chat/completions", headers=headers, json=CHAT).is_success
            embed = {"model": "all-minilm", "input": "x"}
            assert client.post("/api/embed", headers=headers, json=embed).is_success
        assert client.post("/api/chat", headers=bearer(revoked), json=CHAT).is_success
        await admin.revoke_key(deployment.engine, revoked[:12])
        until(
            lambda: client.post("/api/chat", headers=bearer(revoked), json=CHAT).status_code == 401,
            timeout=3,
            what="the revoked key is still accepted",
        )
        assert client.post("/api/chat", headers=bearer(wrong), json=CHAT).status_code == 401

    # The gateway upgrades the tests' cheap hash to its own parameters on verify.
    deadline = time.monotonic() + 10
    while True:
        async with connect(deployment.engine) as conn:
            rows = (
                await conn.execute(
                    sa.select(api_keys.c.prefix, api_keys.c.hash).where(
                        api_keys.c.prefix.in_([good[:12], revoked[:12]])
                    )
                )
            ).all()
        stored: dict[str, str] = {row.prefix: row.hash for row in rows}
        if all(OWASP_PARAMETERS in h for h in stored.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    for key in (good, revoked):
        encoded = stored[key[:12]]
        assert encoded.startswith("$argon2id$v=19$"), encoded
        assert OWASP_PARAMETERS in encoded
        assert KeyHasher().verify(encoded, key)
        assert not KeyHasher().verify(encoded, wrong)

    # Opting in was a policy change, evicted twice (a second time 1 s later): once that
    # is over, put the key back in both cache levels, and look.
    await asyncio.sleep(max(0.0, opted_in_at + 1.5 - time.monotonic()))
    for headers in (bearer(good), {"x-api-key": good}):
        assert httpx.get(deployment.url + "/api/tags", headers=headers).status_code == 200
    await asyncio.sleep(0.6)  # audit rows and the prompt log flushed
    dump = await dump_database(deployment.engine)
    assert good[:12] in dump  # the prefix is public, and we are looking in the right place
    assert "hello" in dump  # the opted-in prompt log is in the dump too
    for key in (good, revoked, wrong):
        digest = hashlib.sha256(key.encode()).digest()
        fast_hashes = (digest.hex(), hashlib.sha256(key[12:].encode()).hexdigest())
        for secret in (*fragments(key[12:]), *fast_hashes):
            assert secret not in dump, "a key, part of its secret or a fast hash of it is stored"

    if deployment.redis_url is not None:
        cache = await dump_redis(deployment.redis_url)
        entry = cache.get(redis_key(good[:12]).encode())
        assert entry is not None, "the shared cache entry of a verified key"
        assert hashlib.sha256(good.encode()).digest() in entry  # a digest, not the key
        for name, value in cache.items():
            for key in (good, wrong):
                for clear in fragments(key[12:]):
                    assert clear.encode() not in name
                    assert clear.encode() not in value, f"a key in clear in Redis under {name!r}"


# -- key guessing / enumeration ---------------------------------------------------------


def test_key_secrets_are_256_bits_from_the_system_csprng() -> None:
    keys = [generate_key() for _ in range(3000)]
    secrets = [key[PREFIX_LENGTH:] for key in keys]
    assert {len(secret) for secret in secrets} == {KEY_LENGTH - PREFIX_LENGTH}
    assert (KEY_LENGTH - PREFIX_LENGTH) * math.log2(len(BASE62)) >= 256
    # Every position draws from the whole alphabet (P(a symbol missing) ~ 62 * e^-48)...
    for position in range(KEY_LENGTH - PREFIX_LENGTH):
        assert {secret[position] for secret in secrets} == set(BASE62), position
    # ... uniformly (each count is ~2080 +- 46; the bound is 6.8 sigma)...
    counts = Counter("".join(secrets))
    expected = len(keys) * (KEY_LENGTH - PREFIX_LENGTH) / len(BASE62)
    assert all(abs(n - expected) < 0.15 * expected for n in counts.values()), counts
    # ... and not from the `random` module, whose state anyone can reproduce.
    state = random.getstate()
    try:
        random.seed(20260101)
        first = generate_key()
        random.seed(20260101)
        assert generate_key() != first
    finally:
        random.setstate(state)


@pytest.fixture
async def private_database() -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A migrated PostgreSQL database of this test's own, so it can be cut off. Ask for
    it before ``rig``: it is dropped after the rig's gateway stopped."""
    name = await services.create_database("threat")
    url = services.pg_url(name)
    engine = create_engine(url)
    try:
        await asyncio.to_thread(upgrade, url)
        yield url, engine
    finally:
        await engine.dispose()
        await services.block_database(name, allow=True)
        await services.drop_database(name)


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_malformed_keys_are_refused_before_any_database_redis_or_argon2_work(
    private_database: tuple[str, AsyncEngine], rig: RigFactory, tmp_path: Path
) -> None:
    """With the database and then Redis gone, a well-formed key gets 503 (it needs
    them), while every malformed one still gets the ordinary 401: nothing was asked."""
    url, _ = private_database
    malformed = [
        "nz_short",
        "nz_" + "!" * 52,
        "sk-" + "a" * 48,
        generate_key()[:-1],
        generate_key() + "x",
        "x" * 4000,
    ]
    with private_redis(tmp_path) as redis_server:
        r = rig("--token-rate", "0", DATABASE_URL=url, REDIS_URL=redis_server.url)
        ordinary = httpx.post(r.gateway.url + "/v1/chat/completions", json=CHAT)
        assert ordinary.status_code == 401

        def check_malformed() -> None:
            for key in malformed:
                for headers in (bearer(key), {"x-api-key": key}):
                    refused = httpx.post(
                        r.gateway.url + "/v1/chat/completions", headers=headers, json=CHAT
                    )
                    assert shape(refused) == shape(ordinary), key[:20]

        await services.block_database(url, allow=False)
        unknown = httpx.post(r.gateway.url + "/v1/chat/completions", headers=bearer(generate_key()))
        assert unknown.status_code == 503  # a well-formed key needs the database
        check_malformed()
        redis_server.stop()
        unknown = httpx.post(r.gateway.url + "/api/chat", headers=bearer(generate_key()))
        assert unknown.status_code == 503  # and the shared cache
        check_malformed()
        assert verifications(r.gateway.url) == 0
        await services.block_database(url, allow=True)
        redis_server.start()  # so the gateway stops quickly, its audit rows written


# -- CPU exhaustion through argon2 ------------------------------------------------------


class HeldHasher(KeyHasher):
    """Verifications wait for ``release``; records where and how many at once."""

    def __init__(self) -> None:
        super().__init__(HASHER.profile)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.threads: set[int] = set()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def verify(self, encoded: str, key: str) -> bool:
        with self._lock:
            self.threads.add(threading.get_ident())
            self.running += 1
            self.most = max(self.most, self.running)
        self.entered.set()
        try:
            self.release.wait(timeout=10)
            return super().verify(encoded, key)
        finally:
            with self._lock:
                self.running -= 1


async def queued(auth: Authenticator, waiting: int, what: str) -> None:
    """Wait until ``waiting`` verifications wait for the argon2 thread (or fail)."""
    deadline = time.monotonic() + 10
    while auth.limiter.statistics().tasks_waiting < waiting:
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


async def test_argon2_runs_off_the_event_loop_one_at_a_time_behind_a_bounded_queue(
    sqlite_url: str,
) -> None:
    engine = create_engine(sqlite_url)
    hasher = HeldHasher()
    # The queue is the subject here: the per-prefix limit (which would turn the guesses
    # away long before) is lifted.
    auth = Authenticator(
        engine=engine,
        local=LocalKeyCache(30),
        shared=MemorySharedCache(60),
        hasher=hasher,
        failures=FailureLimiter(per_prefix=10 * MAX_WAITING_VERIFICATIONS),
    )
    tenant = f"argon2-{uuid.uuid4().hex[:8]}"
    await admin.create_tenant(engine, tenant)
    keys = [(await admin.create_key(engine, tenant, "k", hasher=HASHER)).key for _ in range(3)]
    cached = (await admin.create_key(engine, tenant, "cached", hasher=HASHER)).key
    pending: list[asyncio.Future[Any]] = []
    try:
        hasher.release.set()
        await auth.authenticate(cached, "192.0.2.1")  # verified once, cached from now on
        hasher.release.clear()
        loop_thread = threading.get_ident()
        pending += [asyncio.ensure_future(auth.authenticate(k, "192.0.2.2")) for k in keys]
        await queued(auth, 2, "three verifications did not queue behind one argon2 thread")
        assert hasher.entered.is_set()
        # The event loop is free while argon2 works: a cached key answers at once.
        started = time.monotonic()
        assert (await asyncio.wait_for(auth.authenticate(cached, None), 2)).prefix == cached[:12]
        assert time.monotonic() - started < 0.5
        # Fill the queue with wrong secrets (each its own verification), then one more.
        for _ in range(MAX_WAITING_VERIFICATIONS - 2):
            guess = keys[0][:12] + generate_key()[12:]
            pending.append(asyncio.ensure_future(auth.authenticate(guess, None)))
        await queued(auth, MAX_WAITING_VERIFICATIONS, "the verification queue did not fill")
        guess = keys[1][:12] + generate_key()[12:]
        with pytest.raises(VerificationBusy):  # at once, not after the queue
            await asyncio.wait_for(auth.authenticate(guess, None), 2)
        assert hasher.most == 1  # one verification at a time
        assert loop_thread not in hasher.threads  # and never on the event loop
    finally:
        hasher.release.set()
        results = await asyncio.gather(*pending, return_exceptions=True)
        await engine.dispose()
    assert [getattr(r, "prefix", None) for r in results[:3]] == [k[:12] for k in keys]
    assert all(isinstance(r, InvalidApiKey) for r in results[3:])
    assert hasher.most == 1


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_failed_verifications_are_capped_before_argon2(
    deployment: Deployment, rig: RigFactory
) -> None:
    """Counted by the gateway's own argon2 counter, with the default limits (10 per
    prefix, 30 per address a minute); client addresses come through a trusted proxy."""
    r = rig("--token-rate", "0", TRUSTED_PROXIES="127.0.0.1/32")
    tenant = await deployment.tenant(models=["llama3.2"])
    ordinary = httpx.post(r.gateway.url + "/api/chat", headers=bearer(generate_key()), json=CHAT)
    assert ordinary.status_code == 401
    answers: list[httpx.Response] = []

    client = httpx.Client(base_url=r.gateway.url, timeout=10)

    def attempt(key: str, address: str, path: str = "/api/chat") -> httpx.Response:
        headers = {**bearer(key), "X-Forwarded-For": address}
        answer = client.post(path, headers=headers, json=CHAT)
        answers.append(answer)
        return answer

    async def keys(count: int) -> list[str]:
        return list(await asyncio.gather(*(deployment.key(tenant) for _ in range(count))))

    with client:
        # One prefix, guessed from 13 addresses: 10 argon2 runs, then none.
        start = verifications(r.gateway.url)
        (target,) = await keys(1)
        for i in range(13):
            attempt(target[:12] + generate_key()[12:], f"198.51.100.{i + 1}")
        assert verifications(r.gateway.url) - start == 10

        # One address, guessing 32 prefixes: 30 argon2 runs, then none.
        start = verifications(r.gateway.url)
        for victim in await keys(32):
            attempt(victim[:12] + generate_key()[12:], "203.0.113.7")
        assert verifications(r.gateway.url) - start == 30

        # The owner of a cached key, even behind that same blocked address, is never
        # locked out, and guesses at a cached prefix cost no argon2 at all.
        (owner,) = await keys(1)
        assert attempt(owner, "192.0.2.200").status_code == 200  # verified, so cached
        start = verifications(r.gateway.url)
        for i in range(20):
            attempt(owner[:12] + generate_key()[12:], f"192.0.2.{i + 1}", "/v1/chat/completions")
        for _ in range(3):
            assert attempt(owner, "203.0.113.7").status_code == 200
        assert verifications(r.gateway.url) - start == 0

    # Found wrong, on the argon2 path or not: one 401, nothing to tell them apart. Not
    # verified because a limit was spent: 503 verification_busy, never the 401.
    refused = [a for a in answers if a.status_code != 200]
    assert len(refused) == 13 + 32 + 20
    wrong = [a for a in refused if a.status_code == 401]
    busy = [a for a in refused if a.status_code == 503]
    assert (len(wrong), len(busy)) == (10 + 30 + 20, 3 + 2)
    assert {shape(a) for a in wrong if a.url.path == "/api/chat"} == {shape(ordinary)}
    openai_shaped = httpx.post(r.gateway.url + "/v1/chat/completions", json=CHAT)
    assert {shape(a) for a in wrong if a.url.path != "/api/chat"} == {shape(openai_shaped)}
    for answer in busy:
        assert 1 <= int(answer.headers["retry-after"]) <= 60
        wait = wait_in_words(int(answer.headers["retry-after-ms"]))
        assert answer.json()["error"] == f"Key verification is busy; retry in {wait}."


async def test_a_verified_key_costs_argon2_once(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2", "all-minilm"])
    start = verifications(deployment.url)
    with httpx.Client(base_url=deployment.url, headers=bearer(key), timeout=10) as client:
        for _ in range(4):
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
            assert client.get("/api/tags").status_code == 200
            embed = {"model": "all-minilm", "input": "x"}
            assert client.post("/v1/embeddings", json=embed).status_code == 200
    assert verifications(deployment.url) - start == 1


# -- model enumeration ------------------------------------------------------------------


async def test_unknown_and_disallowed_models_are_indistinguishable_on_every_surface(
    deployment: Deployment,
) -> None:
    key = await deployment.key(models=["llama3.2", "all-minilm"])
    auth = bearer(key)
    chat: dict[str, object] = {"messages": [{"role": "user", "content": "x"}]}
    bodies: list[tuple[str, dict[str, object]]] = [
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/embeddings", {"input": "x"}),
        ("/api/chat", chat),
        ("/api/generate", {"prompt": "x", "stream": False}),
        ("/api/embed", {"input": "x"}),
        ("/api/embeddings", {"prompt": "x"}),
        ("/api/show", {}),
    ]
    # (installed but not allowed, not installed anywhere)
    pairs = [
        ("mistral", "ghost-model"),
        ("nomic-embed-text", "ghost-embed"),
        ("qwen2.5:7b", "llama3.2:70b"),  # a tag the allowed family does not have
        ("acme/coder:1b", "acme/ghost:1b"),
    ]
    client = httpx.Client(base_url=deployment.url, headers=auth, timeout=10)
    for path, body in bodies:
        for installed, missing in pairs:
            answers = [
                client.post(path, json={**body, "model": model}) for model in (installed, missing)
            ]
            assert answers[0].status_code == 403, (path, installed)
            assert shape(answers[0]) == shape(answers[1]), (path, installed, missing)
            assert installed not in answers[0].text
    for installed, missing in pairs:
        listed = [client.get(f"/v1/models/{m}") for m in (installed, missing)]
        assert listed[0].status_code == 403
        assert shape(listed[0]) == shape(listed[1]), (installed, missing)
    client.close()


# -- backend administration through the gateway ---------------------------------------


async def test_no_spelling_of_an_admin_path_reaches_the_backend(deployment: Deployment) -> None:
    key = await deployment.key(allow_all=True)
    before = mock_requests(deployment.mock.url)
    blob = "sha256:" + "0" * 64
    targets = [
        ("POST", "/api/pull/"),
        ("POST", "/api//pull"),
        ("POST", "//api/pull"),
        ("POST", "/api/./pull"),
        ("POST", "/api/chat/../pull"),
        ("POST", "/api/%70ull"),
        ("POST", "/api/pull%2F"),
        ("POST", "/API/PULL"),
        ("POST", "/api/Pull"),
        ("POST", "/api/pull?insecure=true"),
        ("POST", "/api/pull;x=1"),
        ("POST", "/v1/../api/pull"),
        ("POST", f"http://127.0.0.1:{urlsplit(deployment.url).port}/api/pull"),
        ("GET", "/api/pull"),
        ("PUT", "/api/create"),
        ("PATCH", "/api/copy"),
        ("POST", "/api/delete"),
        ("DELETE", "/api/delete/"),
        ("POST", "/api/push"),
        ("POST", f"/api/blobs/{blob}"),
        ("HEAD", f"/api/blobs/{blob}"),
        ("POST", f"/api/blobs/../../api/pull/{blob}"),
        ("POST", "/api/embed/../create"),
        ("POST", "/api/generate/../../api/push"),
        ("DELETE", "/api/chat"),
        ("POST", "/api/ps"),
        ("POST", "/api/tags"),
        ("POST", "/api/v1/pull"),
        ("POST", "/api/unknown"),
    ]
    body = b'{"model": "llama3.2", "name": "llama3.2", "source": "x", "destination": "y"}'
    for method, target in targets:
        for headers in (bearer(key), {}):
            headers = {**headers, "Content-Type": "application/json"}
            status, answer = raw_http(deployment.url, method, target, headers, body)
            assert status in (400, 401, 403, 404, 405), (method, target, status)
            assert b"Traceback" not in answer
    exact = [("POST", p) for p in ("/api/pull", "/api/push", "/api/create", "/api/copy")]
    for method, target in [*exact, ("DELETE", "/api/delete"), ("POST", "/api/pull/")]:
        assert raw_http(deployment.url, method, target, bearer(key))[0] == 403, target
    assert forwarded(before, mock_requests(deployment.mock.url)) == {}


# -- Ollama exposed directly ------------------------------------------------------------


def test_the_deployment_guide_and_the_defaults_keep_ollama_private() -> None:
    """The compose files are checked by tests/test_docker.py; this is the rest of the
    row: the guide states the rule, and nothing listens beyond loopback by default."""
    guide = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    rule = guide.split("## ", 2)[1]
    assert rule.startswith("The one rule: Ollama is never exposed")
    assert "`internal`" in rule
    assert "never publish port 11434" in rule
    assert "only ingress" in rule
    defaults = load_settings({}, env_file=None)
    assert urlsplit(defaults.ollama_base_url).hostname == "127.0.0.1"
    assert defaults.gateway_host == "127.0.0.1"
    assert parse_mock_args([]).host == "127.0.0.1"


# -- limits bypassed across replicas ----------------------------------------------------


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_two_replicas_enforce_one_set_of_limits(
    deployment: Deployment, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        mock = stack.enter_context(
            run_mock(tmp_path, "--token-rate", "20", "--response-tokens", "40")
        )
        shared = stack.enter_context(private_redis(tmp_path))
        env = gateway_env(mock.url, deployment.database_url, shared.url)
        a, b = (stack.enter_context(running_gateway(tmp_path, env)).url for _ in range(2))
        client = stack.enter_context(httpx.Client(timeout=30))

        # rpm: 6 a minute for the key, wherever its requests land.
        rpm = await deployment.key(models=["llama3.2"], limits=Limits(rpm=6))
        short = {**CHAT, "max_tokens": 1}
        statuses = [
            client.post(url + "/v1/chat/completions", headers=bearer(rpm), json=short).status_code
            for url in [a, b] * 4
        ]
        assert statuses == [200] * 6 + [429] * 2

        # concurrency: one slot, held by a stream on A.
        single = await deployment.key(models=["llama3.2"], limits=Limits(concurrent=1))
        body = {**CHAT, "stream": True}
        with client.stream(
            "POST", a + "/v1/chat/completions", headers=bearer(single), json=body
        ) as held:
            assert held.status_code == 200
            lines = held.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            refused = client.post(b + "/v1/chat/completions", headers=bearer(single), json=CHAT)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "concurrency_exceeded"
        until(
            lambda: (
                client.post(
                    b + "/v1/chat/completions",
                    headers=bearer(single),
                    json={**CHAT, "max_tokens": 1},
                ).status_code
                == 200
            ),
            timeout=5,
            what="the slot was not freed on B after the stream on A ended",
        )

        # budget: what A used is what B has left.
        budgeted = await deployment.key(models=["llama3.2"])
        await admin.set_budget(deployment.engine, budgeted[:12], total=1000)
        used = client.post(
            a + "/v1/chat/completions", headers=bearer(budgeted), json={**CHAT, "max_tokens": 5}
        )
        assert used.status_code == 200
        left = 1000 - int(used.json()["usage"]["total_tokens"])

        def b_sees_it() -> bool:
            listed = client.get(b + "/v1/models", headers=bearer(budgeted))
            return int(listed.headers["x-budget-tokens-remaining"]) == left

        until(b_sees_it, timeout=5, what="B does not see the tokens A used")


# -- state store unavailable ------------------------------------------------------------


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_without_redis_nothing_is_served_unmetered(
    deployment: Deployment, rig: RigFactory, tmp_path: Path
) -> None:
    """Keys with no limit at all included: every inference request is a 503 that never
    reaches the backend, whatever the surface."""
    with private_redis(tmp_path) as redis_server:
        r = rig("--token-rate", "0", REDIS_URL=redis_server.url)
        assert r.mock is not None
        unlimited = await deployment.key(allow_all=True)
        limited = await deployment.key(allow_all=True, limits=Limits(rpm=100))
        budgeted = await deployment.key(allow_all=True)
        await admin.set_budget(deployment.engine, budgeted[:12], daily=100_000)
        for key in (
            unlimited,
            limited,
            budgeted,
        ):  # verified and cached: authentication needs no Redis now
            cached = httpx.post(r.gateway.url + "/api/chat", headers=bearer(key), json=CHAT)
            assert cached.status_code == 200
        redis_server.stop()
        before = mock_requests(r.mock.url)
        requests = [
            ("/v1/chat/completions", CHAT),
            ("/v1/chat/completions", {**CHAT, "stream": True}),
            ("/v1/completions", {"model": "llama3.2", "prompt": "x"}),
            ("/v1/embeddings", {"model": "all-minilm", "input": "x"}),
            ("/api/chat", CHAT),
            ("/api/generate", {"model": "llama3.2", "prompt": "x"}),
            ("/api/embed", {"model": "all-minilm", "input": "x"}),
            ("/api/embeddings", {"model": "all-minilm", "prompt": "x"}),
        ]
        attempts = [(unlimited, request) for request in requests]
        attempts += [(key, request) for key in (limited, budgeted) for request in requests[:2]]
        for key, (path, body) in attempts:
            answer = httpx.post(r.gateway.url + path, headers=bearer(key), json=body)
            assert answer.status_code == 503, (path, key[:12])
            error = answer.json()["error"]
            if path.startswith("/v1/"):
                assert error["code"] == "gateway_unavailable"
            else:
                assert isinstance(error, str)
        # Counted listings need the store as well.
        listing = httpx.get(r.gateway.url + "/v1/models", headers=bearer(limited))
        assert listing.status_code == 503
        assert forwarded(before, mock_requests(r.mock.url)) == {}
        redis_server.start()  # so the gateway stops quickly


# -- secrets in logs --------------------------------------------------------------------


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
async def test_logs_metrics_and_stored_rows_hold_no_key_authorization_or_prompt(
    deployment: Deployment, rig: RigFactory
) -> None:
    """At the most verbose log level, through successes, refusals, a backend failure
    and a bad body: the captured output of the gateway process, its metrics and every
    stored row lack the keys, the Authorization values and the prompt text."""
    r = rig("--token-rate", "0", LOG_LEVEL="debug")
    prompt = f"basil-{uuid.uuid4().hex}"
    good = await deployment.key(allow_all=True)
    limited = await deployment.key(allow_all=True, limits=Limits(rpm=1))
    wrong = good[:12] + generate_key()[12:]
    basic = "Basic " + "dXNlcjpzM2NyM3QtcGFzc3dvcmQ="  # user:s3cr3t-password
    foreign = "Bearer sk-proj-" + uuid.uuid4().hex + uuid.uuid4().hex
    messages = [{"role": "user", "content": prompt}]
    requests: list[tuple[dict[str, str], str, dict[str, object]]] = []
    for headers in (bearer(good), {"x-api-key": good}):
        requests += [
            (headers, "/v1/chat/completions", {"model": "llama3.2", "messages": messages}),
            (
                headers,
                "/v1/chat/completions",
                {"model": "llama3.2", "messages": messages, "stream": True},
            ),
            (headers, "/v1/completions", {"model": "llama3.2", "prompt": prompt}),
            (headers, "/v1/embeddings", {"model": "all-minilm", "input": prompt}),
            (headers, "/api/chat", {"model": "llama3.2", "messages": messages}),
            (headers, "/api/generate", {"model": "llama3.2", "prompt": prompt}),
            (headers, "/api/embed", {"model": "all-minilm", "input": [prompt]}),
        ]
    requests += [
        ({"Authorization": basic}, "/v1/chat/completions", {"model": "x", "messages": messages}),
        ({"Authorization": foreign}, "/api/chat", {"model": "llama3.2", "messages": messages}),
        (bearer(wrong), "/api/generate", {"model": "llama3.2", "prompt": prompt}),
        (bearer(good), "/api/chat", {"model": "ghost-model", "messages": messages}),  # 403
        (bearer(good), "/v1/chat/completions", {"model": "llama3.2", "messages": prompt}),  # 400
        (bearer(limited), "/api/generate", {"model": "llama3.2", "prompt": "warm"}),
        (bearer(limited), "/api/generate", {"model": "llama3.2", "prompt": prompt}),  # 429
    ]
    statuses = []
    error_bodies = []
    with httpx.Client(base_url=r.gateway.url, timeout=10) as client:
        for headers, path, body in requests:
            answer = client.post(path, headers=headers, json=body)
            statuses.append(answer.status_code)
            if answer.status_code >= 400:
                error_bodies.append(answer.text)
        # A body that is not JSON, around the prompt; and a backend that fails.
        broken = b'{"model": "llama3.2", "messages": [{"content": "' + prompt.encode() + b'"'
        answer = client.post("/v1/chat/completions", headers=bearer(good), content=broken)
        assert answer.status_code == 400
        error_bodies.append(answer.text)
        r.faults(fail_next=1, paths=["/api/chat"])
        answer = client.post("/api/chat", headers=bearer(good), json={**CHAT, "messages": messages})
        assert answer.status_code >= 500
        error_bodies.append(answer.text)
        metrics = client.get("/metrics").text
    assert {200, 401, 403, 400, 429} <= set(statuses), statuses
    await asyncio.sleep(0.6)  # audit rows flushed
    log = r.gateway.output()
    assert log.count('"event": "request"') >= len(requests) + 2  # every request logged
    haystacks = {
        "the gateway's output": log,
        "the metrics": metrics,
        "the database": await dump_database(deployment.engine),
        "an error body": "\n".join(error_bodies),
    }
    needles = {
        "a key": [good, limited, wrong],
        "part of a key's secret": [f for k in (good, limited, wrong) for f in fragments(k[12:])],
        "part of an Authorization value": [
            f for value in (basic, foreign) for f in fragments(value.split()[1])
        ],
        "part of the prompt": fragments(prompt),
    }
    for where, text in haystacks.items():
        for what, values in needles.items():
            for value in values:
                assert value not in text, f"{what} is in {where}: {value}"


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
async def test_a_key_pasted_into_a_url_path_stays_out_of_logs_and_audit(
    deployment: Deployment,
) -> None:
    key = await deployment.key(allow_all=True)
    ids = []
    for method, path in (
        ("GET", f"/{key}"),
        ("GET", f"/v1/{key}/chat/completions"),
        ("POST", f"/api/{key}"),
        ("POST", f"/api/blobs/{key}"),
    ):
        request_id = uuid.uuid4().hex
        ids.append(request_id)
        answer = httpx.request(
            method, deployment.url + path, headers={**bearer(key), "X-Request-ID": request_id}
        )
        assert answer.status_code in (403, 404)
    rows = [await audit_row(deployment.engine, request_id) for request_id in ids]
    stored = "\n".join(str(tuple(row)) for row in rows)
    logged = "\n".join(
        line for line in deployment.gateway.output().splitlines() if any(i in line for i in ids)
    )
    assert len(logged.splitlines()) == len(ids)
    for text, where in ((logged, "log"), (stored, "audit log")):
        assert key[12:] not in text, f"the key's secret is in the {where}"


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
async def test_blocked_blob_paths_never_become_metrics_series(deployment: Deployment) -> None:
    key = await deployment.key(allow_all=True)
    invented = [f"sha256:{uuid.uuid4().hex}", key]
    for name in invented:
        answer = httpx.post(f"{deployment.url}/api/blobs/{name}", headers=bearer(key))
        assert answer.status_code == 403
    time.sleep(0.3)
    metrics = httpx.get(deployment.url + "/metrics").text
    assert "/api/blobs/" in metrics or "/api/*" in metrics  # the refusals were counted
    for name in invented:
        assert name[12:] not in metrics, "a path a client made up is a metrics label"


# -- metrics disclosure -----------------------------------------------------------------


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_forwarded_for_is_believed_only_from_trusted_proxies_and_never_for_metrics(
    deployment: Deployment, rig: RigFactory
) -> None:
    key = await deployment.key(allow_all=True)
    xff = "X-Forwarded-For"
    expected: dict[str, str] = {}  # request id -> the client address it must be audited with

    def send(base_url: str, address: str, headers: dict[str, str]) -> None:
        request_id = uuid.uuid4().hex
        answer = httpx.get(
            base_url + "/v1/models",
            headers={**bearer(key), **headers, "X-Request-ID": request_id},
        )
        assert answer.status_code == 200
        expected[request_id] = address

    # No TRUSTED_PROXIES (the deployment): the header is the client's word, not evidence.
    send(deployment.url, "127.0.0.1", {xff: "198.51.100.7"})

    outside = services.outbound_address()
    assert not outside.startswith("127.")
    r = rig(
        "--token-rate",
        "0",
        TRUSTED_PROXIES=f"127.0.0.1/32,{outside}/32",
        GATEWAY_HOST="0.0.0.0",
    )
    local = r.gateway.url
    remote = f"http://{outside}:{urlsplit(local).port}"
    send(local, "198.51.100.7", {xff: "198.51.100.7"})
    send(local, "198.51.100.8", {xff: "203.0.113.1, 198.51.100.8"})  # the right-most hop
    send(local, "198.51.100.9", {xff: "198.51.100.9, 127.0.0.1"})  # trusted hops skipped
    send(local, "127.0.0.1", {xff: "not-an-address"})
    send(local, "127.0.0.1", {})
    send(remote, "198.51.100.10", {xff: "198.51.100.10"})
    send(remote, outside, {})
    for request_id, address in expected.items():
        assert (await audit_row(deployment.engine, request_id)).client_ip == address

    assert httpx.get(local + "/metrics").status_code == 200  # a loopback peer, nothing forwarded
    for headers in (
        {xff: "127.0.0.1"},
        {xff: "203.0.113.9"},
        {"Forwarded": "for=127.0.0.1"},
        {"X-Real-IP": "127.0.0.1"},
    ):
        # A proxy on this host forwarded it: it came from somewhere else.
        assert httpx.get(local + "/metrics", headers=headers).status_code == 404, headers
    # From a trusted proxy on another address, claiming loopback, or not claiming anything.
    assert httpx.get(remote + "/metrics", headers={xff: "127.0.0.1"}).status_code == 404
    assert httpx.get(remote + "/metrics").status_code == 404


# -- tenant isolation -------------------------------------------------------------------


async def test_a_key_sees_nothing_of_another_tenant(deployment: Deployment) -> None:
    ours = await deployment.tenant(models=["llama3.2", "all-minilm"], limits=Limits(rpm=40))
    theirs = await deployment.tenant(models=["mistral", "qwen3:8b"], limits=Limits(rpm=3))
    key = await deployment.key(ours)
    other = await deployment.key(theirs)
    await admin.set_budget(deployment.engine, key[:12], daily=100_000)
    await admin.set_budget(deployment.engine, other[:12], daily=50_000)

    # Their traffic: their models loaded in the backend, their rpm spent.
    for _ in range(3):
        assert httpx.post(
            deployment.url + "/api/chat",
            headers=bearer(other),
            json={"model": "mistral", "messages": [{"role": "user", "content": "x"}]},
        ).is_success
    assert "mistral:latest" in {
        m["name"] for m in httpx.get(deployment.mock.url + "/api/ps").json()["models"]
    }
    spent = httpx.post(
        deployment.url + "/api/chat",
        headers=bearer(other),
        json={"model": "mistral", "messages": [{"role": "user", "content": "x"}]},
    )
    assert spent.status_code == 429

    answers: list[httpx.Response] = []
    with httpx.Client(base_url=deployment.url, headers=bearer(key), timeout=10) as client:
        first = client.get("/v1/models")
        answers.append(first)
        # Our budget, untouched by theirs (a listing spends no rpm: no rpm headers).
        assert "x-ratelimit-limit-requests" not in first.headers
        assert first.headers["x-budget-tokens-remaining"] == "100000"
        assert [m["id"] for m in first.json()["data"]] == ["llama3.2:latest", "all-minilm:latest"]
        tags = client.get("/api/tags")
        assert {m["name"] for m in tags.json()["models"]} == {
            "llama3.2:latest",
            "all-minilm:latest",
        }
        running = client.get("/api/ps")
        assert {m["name"] for m in running.json()["models"]} <= {
            "llama3.2:latest",
            "all-minilm:latest",
        }
        answers += [tags, running]
        for model in ("mistral", "qwen3:8b"):
            answers.append(client.post("/api/show", json={"model": model}))
            answers.append(client.get(f"/v1/models/{model}"))
            answers.append(
                client.post("/v1/chat/completions", json={**CHAT, "model": model, "stream": True})
            )
        chat = client.post("/v1/chat/completions", json=CHAT)
        # Our rpm, untouched by theirs: this is the first request it counts.
        assert chat.headers["x-ratelimit-limit-requests"] == "40"
        assert chat.headers["x-ratelimit-remaining-requests"] == "39"
        answers.append(chat)
        answers.append(client.post("/api/generate", json={"model": "llama3.2", "prompt": "x"}))
        answers.append(client.get("/v1/nothing"))
        answers.append(client.post("/api/pull", json={"model": "mistral"}))
        answers.append(client.post("/v1/chat/completions", json={"model": "llama3.2"}))
    answers.append(httpx.get(deployment.url + "/v1/models", headers=bearer(other[:12] + key[12:])))
    assert {a.status_code for a in answers} == {200, 400, 401, 403, 404}
    for answer in answers:
        seen = answer.text + " ".join(f"{k}: {v}" for k, v in answer.headers.items())
        for foreign in (theirs, other[:12], other[12:], "qwen3"):
            assert foreign not in seen, (answer.url, answer.status_code)

    # Usage is per tenant too: their key is not found through ours.
    with pytest.raises(KeyNotFound):
        await admin.usage(deployment.engine, ours, key=other[:12])


# -- allow_all_models -------------------------------------------------------------------


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
async def test_allow_all_models_is_an_explicit_audited_opt_in(
    deployment: Deployment, rig: RigFactory
) -> None:
    """Off unless asked for; with it, a model pulled into Ollama becomes usable (and
    its use is audited under the tenant); without it, the same model stays a 403."""
    r = rig("--token-rate", "0")
    assert r.mock is not None
    default = await deployment.tenant()
    listed = await deployment.tenant(models=["llama3.2"])
    everything = await deployment.tenant(allow_all=True)
    flags = {t.name: t.models.allow_all for t in await admin.list_tenants(deployment.engine)}
    assert (flags[default], flags[listed], flags[everything]) == (False, False, True)
    keys = {name: await deployment.key(name) for name in (default, listed, everything)}

    def ids(key: str) -> set[str]:
        answer = httpx.get(r.gateway.url + "/v1/models", headers=bearer(key))
        return {m["id"] for m in answer.json()["data"]}

    assert ids(keys[default]) == set()
    assert httpx.post(
        r.gateway.url + "/api/chat", headers=bearer(keys[default]), json=CHAT
    ).status_code == (403)

    newcomer = f"pulled-{uuid.uuid4().hex[:6]}:1b"
    httpx.post(r.mock.url + "/_mock/models", json={"models": [newcomer], "replace": False})
    until(lambda: newcomer in ids(keys[everything]), 5, "not discovered within an interval")
    request_id = uuid.uuid4().hex
    used = httpx.post(
        r.gateway.url + "/api/chat",
        headers={**bearer(keys[everything]), "X-Request-ID": request_id},
        json={**CHAT, "model": newcomer, "stream": False},
    )
    assert used.status_code == 200
    row = await audit_row(deployment.engine, request_id)
    tenant = await admin.get_tenant(deployment.engine, everything)
    assert (row.tenant_id, row.model, row.status) == (tenant.id, newcomer, 200)

    for name in (listed, default):
        assert newcomer not in ids(keys[name])
        refused = httpx.post(
            r.gateway.url + "/api/chat",
            headers=bearer(keys[name]),
            json={**CHAT, "model": newcomer},
        )
        ghost = httpx.post(
            r.gateway.url + "/api/chat",
            headers=bearer(keys[name]),
            json={**CHAT, "model": "never-pulled:1b"},
        )
        assert refused.status_code == 403
        assert shape(refused) == shape(ghost)
    # Turning it on is a deliberate call; an empty allowlist is not a way to get it.
    with pytest.raises(InvalidValue):
        await admin.set_models(deployment.engine, listed, models=[])
