"""Backends and model policies (SPEC §4.10, §4.12): the values, the operations on both
databases, the NOTIFY every replica hears, and the residency decisions."""

from __future__ import annotations

import asyncio
import itertools
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin, backend_admin
from nz_core.backends import (
    Backend,
    BackendStatus,
    check_backend_name,
    check_backend_url,
    check_parallel,
    configured_backends,
    effective_backends,
)
from nz_core.database import connect, create_engine
from nz_core.errors import BackendExists, BackendNotFound, InvalidValue
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.ledger import record
from nz_core.migrations import upgrade
from nz_core.residency import (
    FOREVER,
    MAX_NUM_CTX,
    check_num_ctx,
    clamp_keep_alive,
    effective_num_ctx,
    keep_alive_seconds,
)
from nz_core.schema import api_keys, audit_log, backends, model_policies
from nz_core.scopes import DEFAULT_SCOPES, Scope, check_scopes, format_scopes, parse_scopes
from tests import services

NODE_A = Backend(name="node-1", url="http://10.0.0.1:11434")


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def url_for(name: str) -> str:
    return f"http://{name}.example:11434"


@pytest.fixture(params=["postgres", "sqlite"])
async def fresh_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AsyncEngine]:
    """A migrated database of this test's own: the tests that need an empty backends
    table cannot share the session's."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('backends') / 'fresh.db'}"
        name = None
    else:
        name = await services.create_database("backends")
        url = services.pg_url(name)
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()
        if name is not None:
            await services.drop_database(name)


# -- values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("HTTP://GPU-1.Example:11434/", "http://gpu-1.example:11434"),
        ("https://ollama.example/prefix/", "https://ollama.example/prefix"),
        ("  http://[::1]:11434  ", "http://[::1]:11434"),
        ("http://node", "http://node"),
    ],
)
def test_backend_urls_are_normalised(given: str, stored: str) -> None:
    assert check_backend_url(given) == stored


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("ftp://node:21", "http:// or https://"),
        ("node:11434", "http:// or https://"),
        ("http://user:secret@node:11434", "credentials"),
        ("http://user@node:11434", "credentials"),
        ("http://node:11434/?x=1", "query"),
        ("http://node:11434/?", "query"),
        ("http://node:11434/#top", "fragment"),
        ("http://:11434", "no host"),
        ("http://node:99999", "invalid port"),
        ("http://node:0", "invalid port"),
        ("http://no de:11434", "one http"),
        ("", "one http"),
    ],
)
def test_bad_backend_urls_are_refused(given: str, problem: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        check_backend_url(given)
    assert problem in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("name", ["gpu-1", "a", "node.eu-west_2", "x" * 64])
def test_good_backend_names(name: str) -> None:
    assert check_backend_name(name) == name


@pytest.mark.parametrize("name", ["", "GPU-1", "-gpu", "gpu 1", "gpu\n1", "x" * 65, "gpü"])
def test_bad_backend_names(name: str) -> None:
    with pytest.raises(InvalidValue, match="backend name"):
        check_backend_name(name)


@pytest.mark.parametrize("parallel", [0, -1, True, 1.5, "2"])
def test_bad_parallel(parallel: object) -> None:
    with pytest.raises(InvalidValue, match="parallel"):
        check_parallel(parallel)  # type: ignore[arg-type]


def test_configured_backends_are_named_by_position() -> None:
    found = configured_backends(["http://a:1/", "https://B:2"])
    assert found == (
        Backend(name="node-1", url="http://a:1"),
        Backend(name="node-2", url="https://b:2"),
    )
    assert all(backend.active and backend.parallel == 1 for backend in found)
    with pytest.raises(InvalidValue, match="listed twice"):
        configured_backends(["http://a:1", "HTTP://A:1/"])
    with pytest.raises(InvalidValue, match="credentials"):
        configured_backends(["http://a:1", "http://u:p@b:2"])


def test_stored_backends_win_over_configured_ones_even_all_draining() -> None:
    draining = Backend(name="gpu-1", url="http://gpu:1", status=BackendStatus.DRAINING)
    assert effective_backends([], [NODE_A]) == ((NODE_A,), True)
    assert effective_backends([draining], [NODE_A]) == ((draining,), False)


# -- scopes -----------------------------------------------------------------------


def test_residency_is_a_scope_given_only_with_an_endpoint_scope() -> None:
    assert parse_scopes("chat,residency") == {Scope.CHAT, Scope.RESIDENCY}
    assert parse_scopes("residency, embeddings") == {Scope.EMBEDDINGS, Scope.RESIDENCY}
    assert format_scopes(parse_scopes("residency,embeddings,chat")) == "chat,embeddings,residency"
    with pytest.raises(InvalidValue, match="needs chat or embeddings"):
        parse_scopes("residency")
    with pytest.raises(InvalidValue, match="at least one scope"):
        check_scopes([])
    with pytest.raises(InvalidValue, match="expected chat, embeddings, residency"):
        parse_scopes("admin")
    assert Scope.RESIDENCY not in DEFAULT_SCOPES


async def test_keys_get_residency_only_when_asked(engine: AsyncEngine) -> None:
    tenant = unique("res")
    await admin.create_tenant(engine, tenant)
    hasher = KeyHasher(TEST_HASH_PROFILE)
    plain = (await admin.create_key(engine, tenant, "plain", hasher=hasher)).record
    assert plain.scopes == {Scope.CHAT, Scope.EMBEDDINGS}
    every = frozenset({Scope.CHAT, Scope.EMBEDDINGS, Scope.RESIDENCY})
    privileged = (await admin.create_key(engine, tenant, "ops", scopes=every, hasher=hasher)).record
    assert (await admin.get_key(engine, privileged.prefix)).scopes == every
    with pytest.raises(InvalidValue, match="needs chat or embeddings"):
        await admin.create_key(engine, tenant, "x", scopes=frozenset({Scope.RESIDENCY}))
    # Every set the rule allows is one the database stores.
    for size in (1, 2, 3):
        for chosen in itertools.combinations(Scope, size):
            if set(chosen) & DEFAULT_SCOPES:
                created = await admin.create_key(
                    engine, tenant, "k", scopes=frozenset(chosen), hasher=hasher
                )
                assert created.record.scopes == set(chosen)
    # The database holds the same rule, whoever writes.
    with pytest.raises(IntegrityError):
        async with connect(engine) as conn:
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.prefix == plain.prefix)
                .values(scopes="residency")
            )


# -- operations, on both databases ---------------------------------------------------


async def test_backend_lifecycle(engine: AsyncEngine) -> None:
    name = unique("gpu")
    added = await backend_admin.add_backend(engine, name, url_for(name).upper() + "/", parallel=4)
    assert (added.name, added.url, added.parallel) == (name, url_for(name), 4)
    assert added.status is BackendStatus.ACTIVE
    assert added.created_at is not None
    assert added.created_at.tzinfo is UTC
    assert added.updated_at == added.created_at
    assert await backend_admin.get_backend(engine, name) == added
    assert added in await backend_admin.list_backends(engine)

    drained = await backend_admin.drain_backend(engine, name)
    assert drained.status is BackendStatus.DRAINING
    assert not drained.active
    assert drained.updated_at is not None
    assert drained.updated_at > added.created_at
    assert await backend_admin.drain_backend(engine, name) == drained  # no change, no write

    active = await backend_admin.activate_backend(engine, name)
    assert active.status is BackendStatus.ACTIVE

    removed = await backend_admin.remove_backend(engine, name)
    assert removed == active
    assert name not in [b.name for b in await backend_admin.list_backends(engine)]
    for operation in (
        backend_admin.get_backend,
        backend_admin.drain_backend,
        backend_admin.activate_backend,
        backend_admin.remove_backend,
    ):
        with pytest.raises(BackendNotFound, match=f"unknown backend '{name}'"):
            await operation(engine, name)
    with pytest.raises(BackendNotFound, match="unknown backend 'Not A Name'"):
        await backend_admin.drain_backend(engine, "Not A Name")


async def test_one_name_one_node(engine: AsyncEngine) -> None:
    name, other = unique("gpu"), unique("gpu")
    await backend_admin.add_backend(engine, name, url_for(name))
    with pytest.raises(BackendExists, match=f"backend '{name}' already exists"):
        await backend_admin.add_backend(engine, name, url_for(other))
    # The same node spelled another way is the same node: its slots would count twice.
    with pytest.raises(BackendExists, match=f"backend '{name}' already points at"):
        await backend_admin.add_backend(engine, other, url_for(name).upper() + "/")
    names = [b.name for b in await backend_admin.list_backends(engine)]
    assert other not in names
    await backend_admin.remove_backend(engine, name)


@pytest.mark.parametrize(
    ("name", "url", "parallel", "problem"),
    [
        ("Bad Name", "http://x:1", 1, "backend name"),
        ("ok", "http://u:p@x:1", 1, "credentials"),
        ("ok", "ftp://x:1", 1, "http://"),
        ("ok", "http://x:1", 0, "parallel"),
    ],
)
async def test_invalid_backends_write_nothing(
    engine: AsyncEngine, name: str, url: str, parallel: int, problem: str
) -> None:
    before = await backend_admin.list_backends(engine)
    with pytest.raises(InvalidValue) as caught:
        await backend_admin.add_backend(engine, name, url, parallel=parallel)
    assert problem in str(caught.value)
    assert await backend_admin.list_backends(engine) == before


async def test_the_table_refuses_what_the_operations_refuse(engine: AsyncEngine) -> None:
    """Constraints hold for neuronetz-console's own writes too."""
    name = unique("gpu")
    for values in (
        {"parallel": 0},
        {"status": "paused"},
        {"name": ""},
    ):
        with pytest.raises(IntegrityError):
            async with connect(engine) as conn:
                await conn.execute(
                    backends.insert().values({"name": name, "url": url_for(name)} | values)
                )
    with pytest.raises(IntegrityError):
        async with connect(engine) as conn:
            await conn.execute(model_policies.insert().values(model=unique("m"), num_ctx=0))


async def test_model_policies(engine: AsyncEngine) -> None:
    model = unique("Model")
    pinned = await backend_admin.set_model_policy(engine, model, num_ctx=8192)
    assert (pinned.model, pinned.num_ctx) == (f"{model.lower()}:latest", 8192)
    assert pinned.updated_at is not None
    again = await backend_admin.set_model_policy(engine, f"{model.lower()}:latest", num_ctx=8192)
    assert again == pinned  # nothing changed, nothing written
    unpinned = await backend_admin.set_model_policy(engine, model, num_ctx=None)
    assert unpinned.num_ctx is None
    listed = {p.model: p for p in await backend_admin.list_model_policies(engine)}
    assert listed[pinned.model] == unpinned
    for bad in (0, -4, MAX_NUM_CTX + 1, True):
        with pytest.raises(InvalidValue, match="num_ctx"):
            await backend_admin.set_model_policy(engine, model, num_ctx=bad)
    with pytest.raises(InvalidValue, match="name a model"):
        await backend_admin.set_model_policy(engine, "  ", num_ctx=4096)
    for unmatchable in ("llama 3", "lla\u212ama3", "llama\t3"):
        with pytest.raises(InvalidValue, match="ASCII without spaces"):
            await backend_admin.set_model_policy(engine, unmatchable, num_ctx=4096)
    assert {p.model: p for p in await backend_admin.list_model_policies(engine)} == listed


async def test_topology_falls_back_to_the_configured_backends(fresh_engine: AsyncEngine) -> None:
    configured = configured_backends(["http://a:1", "http://b:2"])
    topology = await backend_admin.load_topology(fresh_engine, configured)
    assert topology.backends == configured
    assert topology.configured
    assert topology.policies == {}

    await backend_admin.add_backend(fresh_engine, "gpu-2", "http://gpu-2:11434", parallel=2)
    gpu_1 = await backend_admin.add_backend(fresh_engine, "gpu-1", "http://gpu-1:11434")
    await backend_admin.drain_backend(fresh_engine, "gpu-2")
    await backend_admin.set_model_policy(fresh_engine, "qwen3:8b", num_ctx=16384)
    await backend_admin.set_model_policy(fresh_engine, "llama3.2", num_ctx=None)
    topology = await backend_admin.load_topology(fresh_engine, configured)
    assert not topology.configured
    assert [b.name for b in topology.backends] == ["gpu-1", "gpu-2"]
    assert topology.backends[0] == gpu_1
    assert topology.backends[1].status is BackendStatus.DRAINING
    assert topology.pinned_num_ctx("qwen3:8b") == 16384
    assert topology.pinned_num_ctx("llama3.2:latest") is None
    assert topology.pinned_num_ctx("mistral:latest") is None
    # Polling (embedded mode) sees a change as a different value, nothing else.
    assert await backend_admin.load_topology(fresh_engine, configured) == topology

    await backend_admin.remove_backend(fresh_engine, "gpu-1")
    await backend_admin.remove_backend(fresh_engine, "gpu-2")
    emptied = await backend_admin.load_topology(fresh_engine, configured)
    assert emptied.backends == configured
    assert emptied.configured


async def test_audit_rows_name_their_backend(engine: AsyncEngine) -> None:
    def row(backend: str | None) -> dict[str, object]:
        values: dict[str, object] = {
            "id": uuid.uuid4(),
            "request_id": unique("r"),
            "ts": datetime.now(UTC),
            "tenant_id": None,
            "key_id": None,
            "key_prefix": None,
            "endpoint": "/api/chat",
            "model": "llama3.2:latest",
            "tokens_in": 0,
            "tokens_out": 0,
            "status": 200,
            "latency_ms": 3,
            "ttft_ms": None,
            "client_ip": None,
            "stream": False,
        }
        return values if backend is None else values | {"backend": backend}

    served, refused = row("gpu-1"), row(None)  # a row from before routing names none
    assert await record(engine, [served, refused], ZoneInfo("UTC")) == {served["id"], refused["id"]}
    async with connect(engine) as conn:
        rows = await conn.execute(
            sa.select(audit_log.c.id, audit_log.c.backend).where(
                audit_log.c.id.in_([served["id"], refused["id"]])
            )
        )
        found = {row.id: row.backend for row in rows}
    assert found == {served["id"]: "gpu-1", refused["id"]: None}


# -- NOTIFY -----------------------------------------------------------------------


@pytest.fixture
async def pg_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def backends_listener(postgres_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    """A LISTEN on ``backends_changed``, as every gateway replica holds."""
    database = postgres_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, database=database
    )
    queue: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        queue.put_nowait(str(payload))

    await conn.add_listener("backends_changed", on_notify)
    try:
        yield queue
    finally:
        await conn.close()


async def next_payload(queue: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(queue.get(), timeout=2)


async def assert_silent(queue: asyncio.Queue[str]) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), timeout=0.3)


async def test_every_change_notifies_backends_changed(
    pg_engine: AsyncEngine, backends_listener: asyncio.Queue[str]
) -> None:
    name = unique("gpu")
    await backend_admin.add_backend(pg_engine, name, url_for(name))
    assert await next_payload(backends_listener) == f"backends:{name}"
    await backend_admin.drain_backend(pg_engine, name)
    assert await next_payload(backends_listener) == f"backends:{name}"
    await backend_admin.drain_backend(pg_engine, name)  # already draining: nothing to say
    await assert_silent(backends_listener)
    await backend_admin.activate_backend(pg_engine, name)
    assert await next_payload(backends_listener) == f"backends:{name}"
    await backend_admin.remove_backend(pg_engine, name)
    assert await next_payload(backends_listener) == f"backends:{name}"

    model = f"{unique('m')}:7b"
    await backend_admin.set_model_policy(pg_engine, model, num_ctx=4096)
    assert await next_payload(backends_listener) == f"model_policies:{model}"
    await backend_admin.set_model_policy(pg_engine, model, num_ctx=4096)
    await assert_silent(backends_listener)
    await backend_admin.set_model_policy(pg_engine, model, num_ctx=None)
    assert await next_payload(backends_listener) == f"model_policies:{model}"
    await backend_admin.list_backends(pg_engine)  # reads say nothing
    await assert_silent(backends_listener)


async def test_direct_writes_notify_too(
    pg_engine: AsyncEngine, backends_listener: asyncio.Queue[str]
) -> None:
    """neuronetz-console (or psql) writing the table is heard like the CLI."""
    name = unique("gpu")
    async with connect(pg_engine) as conn:
        await conn.execute(backends.insert().values(name=name, url=url_for(name)))
    assert await next_payload(backends_listener) == f"backends:{name}"
    # A transaction that rolls back announces nothing.
    async with pg_engine.connect() as conn:
        await conn.execute(backends.update().values(parallel=9).where(backends.c.name == name))
        await conn.rollback()
    await assert_silent(backends_listener)
    assert (await backend_admin.get_backend(pg_engine, name)).parallel == 1
    await backend_admin.remove_backend(pg_engine, name)
    assert await next_payload(backends_listener) == f"backends:{name}"


# -- residency decisions (pure) ----------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "sent"),
    [
        (300.0, 300.0),  # within the bounds: unchanged
        (5.0, 60.0),  # too short: the minimum
        (0.0, 60.0),  # an unload, once the caller has let it through
        (86_400.0, 1800.0),  # too long: the maximum
        (FOREVER, 1800.0),  # forever (negative): the maximum
    ],
)
def test_keep_alive_is_clamped(asked: float, sent: float) -> None:
    assert clamp_keep_alive(asked, 60.0, 1800.0) == sent


def test_keep_alive_forever_as_ollama_reads_it_becomes_the_maximum() -> None:
    for value in (-1, "-1s", "-5m"):
        assert keep_alive_seconds(value) == FOREVER
        assert clamp_keep_alive(keep_alive_seconds(value), 60.0, 1800.0) == 1800.0
    assert not math.isinf(clamp_keep_alive(FOREVER, 0.0, 1.0))


@pytest.mark.parametrize(
    ("requested", "pinned", "context_length", "sent"),
    [
        (2048, 8192, 131072, 8192),  # pinned: replaced
        (None, 8192, 131072, 8192),  # pinned, even when the client names none
        (65536, 8192, 4096, 8192),  # pinned: the operator's word stands
        (200_000, None, 131072, 131072),  # unpinned: capped at the model's length
        (2048, None, 131072, 2048),
        (2048, None, None, 2048),  # the model's length unknown: as asked
        (None, None, 131072, None),  # nothing asked, nothing pinned: Ollama's default
    ],
)
def test_num_ctx_is_pinned_or_capped(
    requested: int | None, pinned: int | None, context_length: int | None, sent: int | None
) -> None:
    assert effective_num_ctx(requested, pinned, context_length) == sent


def test_num_ctx_bounds() -> None:
    assert check_num_ctx(1) == 1
    assert check_num_ctx(MAX_NUM_CTX) == MAX_NUM_CTX
    for bad in (0, MAX_NUM_CTX + 1, 1.5, False):
        with pytest.raises(InvalidValue, match="num_ctx"):
            check_num_ctx(bad)  # type: ignore[arg-type]
