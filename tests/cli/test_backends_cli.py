"""The backend and model-policy commands (SPEC §11, §4.10, §4.12) against PostgreSQL and
SQLite, with real mock Ollama nodes to ask."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests import services
from tests.cli.test_cli import Cli
from tests.processes import MockProcess, free_port, run_mock

DEAD = f"http://127.0.0.1:{free_port()}"  # nothing listens there
RARE = "only-on-two:1b"  # in the second node's catalogue alone


@pytest.fixture(params=["postgres", "sqlite"])
async def cli(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cli]:
    """The command bound to a fresh, unmigrated database of this test's own."""
    if request.param == "sqlite":
        yield Cli(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path)
        return
    name = await services.create_database("backends_cli")
    try:
        yield Cli(services.pg_url(name, driver="postgresql"), tmp_path)
    finally:
        await services.drop_database(name)


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
async def seeded(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    nodes: tuple[MockProcess, MockProcess],
) -> AsyncIterator[Cli]:
    """One migrated database with one backend (gpu-1, the first node), shared by the
    tests that must write nothing."""
    cwd = tmp_path_factory.mktemp("seeded")
    name = None
    if request.param == "sqlite":
        seeded = Cli(f"sqlite:///{cwd / 'cli.db'}", cwd)
    else:
        name = await services.create_database("backends_cli")
        seeded = Cli(services.pg_url(name, driver="postgresql"), cwd)
    try:
        # The command runs its own event loop: not on this one.
        await asyncio.to_thread(seeded, "migrate")
        await asyncio.to_thread(seeded, "add-backend", "--name", "gpu-1", "--url", nodes[0].url)
        yield seeded
    finally:
        if name is not None:
            await services.drop_database(name)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MockProcess, MockProcess]]:
    """Two nodes with different catalogues; the second has loaded a model at 8192."""
    logs = tmp_path_factory.mktemp("nodes")
    with run_mock(logs) as first, run_mock(logs) as second:
        httpx.post(f"{second.url}/_mock/models", json={"models": [RARE, "llama3.2"]})
        httpx.post(
            f"{second.url}/api/generate",
            json={
                "model": RARE,
                "prompt": "hi",
                "stream": False,
                "options": {"num_ctx": 8192},
            },
            timeout=30,
        ).raise_for_status()
        yield first, second


def test_backends_from_the_environment_while_the_table_is_empty(
    cli: Cli, nodes: tuple[MockProcess, MockProcess]
) -> None:
    first, _ = nodes
    cli("migrate")
    cli.env["OLLAMA_BASE_URL"] = first.url
    shown = cli("list-backends")
    assert "OLLAMA_BASE_URL(S) define these backends" in shown.stderr
    line = shown.stdout.strip()
    assert line.startswith(f"node-1 {first.url} parallel=1 status=active models=")
    assert "llama3.2:latest" in line
    assert line.endswith("resident=none")

    cli.env["OLLAMA_BASE_URLS"] = f"{first.url},{DEAD}"
    listed = cli.json("list-backends")
    assert [(b["name"], b["url"], b["source"]) for b in listed] == [
        ("node-1", first.url, "environment"),
        ("node-2", DEAD, "environment"),
    ]
    assert listed[0]["reachable"]
    assert not listed[1]["reachable"]
    assert listed[1]["error"]
    text = cli("list-backends").stdout.splitlines()
    assert text[1].startswith(f"node-2 {DEAD} parallel=1 status=active unreachable (")

    cli.env["OLLAMA_BASE_URLS"] = f"{first.url},http://user:pw@host:1"
    assert "OLLAMA_BASE_URLS" in cli.fails("list-backends")


def test_the_operator_adds_drains_and_removes_nodes(
    cli: Cli, nodes: tuple[MockProcess, MockProcess]
) -> None:
    first, second = nodes
    cli("migrate")
    cli.env["OLLAMA_BASE_URL"] = DEAD  # in force only while the table is empty
    added = cli.json("add-backend", "--name", "gpu-1", "--url", first.url + "/")
    assert added["url"] == first.url
    assert (added["parallel"], added["status"]) == (1, "active")
    line = cli("add-backend", "--name", "gpu-2", "--url", second.url, "--parallel", "4").stdout
    assert line.strip() == f"added backend gpu-2 {second.url} parallel=4 status=active"

    result = cli("list-backends")
    assert result.stderr == ""  # from the database: no note
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"gpu-1 {first.url} parallel=1 status=active models=")
    assert lines[1] == (
        f"gpu-2 {second.url} parallel=4 status=active"
        f" models=llama3.2:latest,{RARE} resident={RARE}(ctx=8192)"
    )
    listed = {b["name"]: b for b in cli.json("list-backends")}
    assert listed["gpu-2"]["source"] == "database"
    assert listed["gpu-2"]["resident"][0]["model"] == RARE
    assert listed["gpu-2"]["resident"][0]["context_length"] == 8192

    # list-models asks every active node, not OLLAMA_BASE_URL.
    assert RARE in cli.json("list-models")["models"]

    drained = cli("drain-backend", "--name", "gpu-2")
    assert drained.stdout.strip() == f"gpu-2 {second.url} parallel=4 status=draining"
    assert drained.stderr == ""
    assert RARE not in cli.json("list-models")["models"]  # drained: not offered
    assert cli.json("drain-backend", "--name", "gpu-2")["status"] == "draining"  # idempotent
    assert cli.json("activate-backend", "--name", "gpu-2")["status"] == "active"

    cli("drain-backend", "--name", "gpu-1")
    last = cli("drain-backend", "--name", "gpu-2")
    assert last.stderr.startswith("warning: no backend is active now")
    assert "no active backend" in cli.fails("list-models")

    removed = cli("remove-backend", "--name", "gpu-1")
    assert removed.stdout.strip() == f"removed backend gpu-1 {first.url} parallel=1 status=draining"
    emptied = cli("remove-backend", "--name", "gpu-2", "--json")
    assert json.loads(emptied.stdout)["name"] == "gpu-2"
    assert "OLLAMA_BASE_URL(S) define the backends again" in emptied.stderr
    assert [b["name"] for b in cli.json("list-backends")] == ["node-1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add-backend", "--name", "gpu-1", "--url", "http://other:1"), "already exists"),
        (("add-backend", "--name", "gpu-9", "--url", "{FIRST}/"), "already points at"),
        (("add-backend", "--name", "GPU 1", "--url", "http://x:1"), "backend name"),
        (("add-backend", "--name", "gpu-9", "--url", "http://u:secret@x:1"), "credentials"),
        (("add-backend", "--name", "gpu-9", "--url", "http://x:1/?a=1"), "query"),
        (("add-backend", "--name", "gpu-9", "--url", "ftp://x:1"), "http:// or https://"),
        (("add-backend", "--name", "gpu-9", "--url", "http://x:1", "--parallel", "0"), "≥ 1"),
        (("add-backend", "--name", "gpu-9", "--url", "http://x:1", "--parallel", "two"), "≥ 1"),
        (("add-backend", "--name", "gpu-9"), "--url"),
        (("drain-backend", "--name", "ghost"), "unknown backend 'ghost'"),
        (("activate-backend", "--name", "ghost"), "unknown backend 'ghost'"),
        (("remove-backend", "--name", "ghost"), "unknown backend 'ghost'"),
        (("set-model-policy", "--model", "llama3.2"), "exactly one of --num-ctx or --no-num-ctx"),
        (
            ("set-model-policy", "--model", "llama3.2", "--num-ctx", "8", "--no-num-ctx"),
            "exactly one of",
        ),
        (("set-model-policy", "--model", "llama3.2", "--num-ctx", "0"), "--num-ctx must be"),
        (("set-model-policy", "--model", "llama3.2", "--num-ctx", "9999999999"), "num_ctx must"),
        (("set-model-policy", "--model", " ", "--num-ctx", "8"), "name a model"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    seeded: Cli, nodes: tuple[MockProcess, MockProcess], args: tuple[str, ...], message: str
) -> None:
    args = tuple(arg.replace("{FIRST}", nodes[0].url.upper()) for arg in args)
    before = seeded.json("list-backends"), seeded.json("list-model-policies")
    error = seeded.fails(*args)
    assert message in error
    assert "secret" not in error
    assert (seeded.json("list-backends"), seeded.json("list-model-policies")) == before


def test_model_policies(cli: Cli) -> None:
    cli("migrate")
    assert cli("list-model-policies").stdout == ""
    pinned = cli("set-model-policy", "--model", "Qwen3:8B", "--num-ctx", "16384")
    assert pinned.stdout.strip() == "qwen3:8b num_ctx=16384"
    assert cli.json("set-model-policy", "--model", "llama3.2", "--num-ctx", "8192")["model"] == (
        "llama3.2:latest"
    )
    unpinned = cli.json("set-model-policy", "--model", "qwen3:8b", "--no-num-ctx")
    assert unpinned["num_ctx"] is None
    assert cli("list-model-policies").stdout.splitlines() == [
        "llama3.2:latest num_ctx=8192",
        "qwen3:8b num_ctx=none",
    ]
    assert [p["model"] for p in cli.json("list-model-policies")] == ["llama3.2:latest", "qwen3:8b"]


def test_keys_with_the_residency_scope(cli: Cli) -> None:
    cli("migrate")
    cli("create-tenant", "--name", "acme")
    cli("create-key", "--tenant", "acme", "--name", "plain")
    cli("create-key", "--tenant", "acme", "--name", "ops", "--scopes", "chat,residency")
    scopes = {k["name"]: k["scopes"] for k in cli.json("list-keys", "--tenant", "acme")}
    assert scopes == {"plain": ["chat", "embeddings"], "ops": ["chat", "residency"]}
    error = cli.fails("create-key", "--tenant", "acme", "--name", "x", "--scopes", "residency")
    assert "needs chat or embeddings" in error


def test_every_command_has_help_and_json(tmp_path: Path) -> None:
    cli = Cli(f"sqlite:///{tmp_path / 'h.db'}", tmp_path)
    for command in (
        "add-backend",
        "list-backends",
        "drain-backend",
        "activate-backend",
        "remove-backend",
        "set-model-policy",
        "list-model-policies",
    ):
        assert "--json" in cli(command, "--help").stdout, command
    assert "residency" in cli("create-key", "--help").stdout
