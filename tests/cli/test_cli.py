"""The real `neuronetz-gateway` command against PostgreSQL and SQLite (SPEC §11).

The command runs in this process (its entry point, with its own environment, working
directory, stdout and stderr), which costs milliseconds where a process costs a second
of start-up; the tests that are about the process (the installed command, its help,
its exit status) run it as an operator does, in a process of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nz_core.migrations import head_revision
from tests import services
from tests.cli.runner import run_cli
from tests.processes import MockProcess

CLI = [sys.executable, "-m", "nz_cli"]
KEY_RE = re.compile(r"^nz_[0-9A-Za-z]{52}$")


class Cli:
    """Runs the command with one DATABASE_URL, from a directory with no .env file."""

    def __init__(self, database_url: str, cwd: Path, *, process: bool = False) -> None:
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))
        }
        self.env["DATABASE_URL"] = database_url
        self.cwd = cwd
        self.process = process

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        if self.process:
            result = subprocess.run(
                [*CLI, *args],
                capture_output=True,
                text=True,
                env=self.env,
                cwd=self.cwd,
                timeout=60,
            )
        else:
            result = run_cli(args, self.env, self.cwd)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def fails(self, *args: str) -> str:
        """Run a command that must fail: non-zero exit, one line on stderr."""
        result = self(*args, ok=False)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        assert "Traceback" not in result.stderr
        return lines[0]


@pytest.fixture(params=["postgres", "sqlite"])
async def cli(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cli]:
    """A CLI bound to a fresh, unmigrated database."""
    if request.param == "sqlite":
        yield Cli(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path)
        return
    name = await services.create_database("cli")
    try:
        yield Cli(services.pg_url(name, driver="postgresql"), tmp_path)
    finally:
        await services.drop_database(name)


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True)
    cli = Cli(f"sqlite:///{tmp_path / 'h.db'}", tmp_path)
    for command in (
        "migrate",
        "serve",
        "demo",
        "create-tenant",
        "create-key",
        "list-keys",
        "revoke-key",
        "set-limits",
        "set-budget",
        "set-models",
        "set-prompt-log",
        "list-models",
        "show-usage",
        "list-tenants",
    ):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command
        sub = cli(command, "--help")
        if command not in ("serve", "demo"):
            assert "--json" in sub.stdout, command


def test_the_command_as_a_process(tmp_path: Path) -> None:
    """The installed entry point, as an operator runs it: output, exit status, errors."""
    cli = Cli(f"sqlite:///{tmp_path / 'p.db'}", tmp_path, process=True)
    assert cli.json("migrate") == {"revision": head_revision()}
    assert cli("create-tenant", "--name", "acme").returncode == 0
    key = cli("create-key", "--tenant", "acme", "--name", "k").stdout.strip()
    assert KEY_RE.match(key)
    assert "unknown tenant 'ghost'" in cli.fails("list-keys", "--tenant", "ghost")


def test_the_operator_sequence(cli: Cli) -> None:
    assert "not migrated" in cli.fails("list-tenants") or "migrate" in cli.fails("list-tenants")
    cli("migrate")
    assert cli.json("migrate") == {"revision": head_revision()}  # twice: idempotent

    assert "created tenant acme" in cli("create-tenant", "--name", "acme", "--rpm", "60").stdout
    created = cli("create-key", "--tenant", "acme", "--name", "server-1")
    lines = created.stdout.splitlines()
    assert len(lines) == 1
    assert KEY_RE.match(lines[0])
    key = lines[0]
    prefix = key[:12]
    assert key not in created.stderr

    listing = cli("list-keys", "--tenant", "acme").stdout
    assert re.fullmatch(
        rf"{prefix} status=active name='server-1' created=\d{{4}}-\d\d-\d\dT[^ ]+\n", listing
    )
    assert key[12:] not in listing

    assert cli("set-limits", "--key", prefix, "--rpm", "5", "--tpm", "none").stdout == (
        f"{prefix} rpm=5 tpm=none concurrent=none\n"
    )
    tenant = cli.json("set-limits", "--tenant", "acme", "--concurrent", "4")
    assert (tenant["rpm"], tenant["concurrent"]) == (60, 4)
    assert cli("set-budget", "--key", prefix, "--daily", "1000", "--total", "none").stdout == (
        f"{prefix} daily=1000 monthly=none total=none\n"
    )
    models = cli.json("set-models", "--tenant", "acme", "--models", "llama3.2,qwen2.5:7b")
    assert models["allowed_models"] == ["llama3.2:latest", "qwen2.5:7b"]
    assert cli.json("set-models", "--tenant", "acme", "--allow-all")["allow_all_models"] is True
    assert (
        "prompt_log=enabled retention_days=3"
        in cli("set-prompt-log", "--key", prefix, "--enable", "--retention-days", "3").stdout
    )
    assert cli("show-usage", "--tenant", "acme").stdout == "requests=0 tokens_in=0 tokens_out=0\n"
    usage = cli.json("show-usage", "--tenant", "acme", "--key", prefix, "--period", "month")
    assert usage["requests"] == 0
    assert usage["period"] == "month"
    assert cli("revoke-key", "--prefix", prefix).stdout.startswith(f"{prefix} revoked at ")
    assert "already revoked" in cli("revoke-key", "--prefix", prefix).stdout
    assert cli.json("list-keys", "--tenant", "acme")[0]["status"] == "revoked"
    tenants = cli.json("list-tenants")
    assert [t["name"] for t in tenants] == ["acme"]
    json_key = cli.json("create-key", "--tenant", "acme", "--name", "k2", "--scopes", "chat")
    assert KEY_RE.match(json_key["key"])
    assert json_key["prefix"] == json_key["key"][:12]

    # No full key appears anywhere but in create-key's own output.
    everything = "".join(
        cli(*args).stdout + cli(*args).stderr
        for args in (
            ("list-keys", "--tenant", "acme"),
            ("list-keys", "--tenant", "acme", "--json"),
            ("list-tenants", "--json"),
            ("show-usage", "--tenant", "acme", "--json"),
        )
    )
    assert key not in everything
    assert json_key["key"] not in everything


BAD_INPUT: list[tuple[tuple[str, ...], str]] = [
    (("create-tenant", "--name", "acme"), "already exists"),
    (("create-tenant", "--name", "neg", "--rpm", "-5"), "at least 1"),
    (("create-tenant", "--name", "frac", "--tpm", "1.5"), "whole number"),
    (("create-key", "--tenant", "nobody", "--name", "k"), "unknown tenant 'nobody'"),
    (("create-key", "--tenant", "acme", "--name", "k", "--scopes", "admin"), "unknown scope"),
    (("create-key", "--tenant", "acme", "--name", "k", "--scopes", ","), "at least one scope"),
    (("create-key", "--tenant", "acme"), "--name"),
    (("revoke-key", "--prefix", "nz_000000000"), "unknown key prefix"),
    (("set-limits", "--key", "nz_000000000", "--rpm", "3"), "unknown key prefix"),
    (("set-limits", "--tenant", "acme", "--rpm", "0"), "at least 1"),
    (("set-limits", "--tenant", "acme", "--tpm", "1000000000000"), "at most 2147483647"),
    (("set-limits", "--tenant", "acme", "--key", "nz_000000000", "--rpm", "3"), "exactly one"),
    (("set-limits", "--tenant", "acme"), "nothing to change"),
    (("set-budget", "--key", "nz_000000000", "--daily", "5"), "unknown key prefix"),
    (("set-budget", "--key", "nz_000000000", "--total", str(2**53)), "at most"),
    (("set-models", "--tenant", "acme", "--models", " , "), "model list is empty"),
    (("set-models", "--tenant", "ghost", "--allow-all"), "unknown tenant"),
    (("show-usage", "--tenant", "acme", "--period", "week"), "period"),
    (("show-usage", "--tenant", "ghost"), "unknown tenant"),
    (("list-keys", "--tenant", "ghost"), "unknown tenant"),
    (("no-such-command",), "No such command"),
]


def test_bad_input_is_one_line_and_writes_nothing(cli: Cli) -> None:
    cli("migrate")
    cli("create-tenant", "--name", "acme", "--rpm", "10")
    prefix = cli.json("create-key", "--tenant", "acme", "--name", "k")["prefix"]
    before = (cli.json("list-tenants"), cli.json("list-keys", "--tenant", "acme"))
    for args, message in BAD_INPUT:
        assert message in cli.fails(*args), args
    for bad in ("-1", "x", "1e3"):
        assert "--daily" in cli.fails("set-budget", "--key", prefix, "--daily", bad)
    assert (cli.json("list-tenants"), cli.json("list-keys", "--tenant", "acme")) == before


def test_unreachable_database(tmp_path: Path) -> None:
    cli = Cli("postgresql://postgres@127.0.0.1:1/nowhere", tmp_path)
    for command in (("migrate",), ("list-tenants",), ("create-tenant", "--name", "x")):
        assert "database unreachable" in cli.fails(*command)


def test_invalid_setting_names_the_variable(tmp_path: Path) -> None:
    cli = Cli(f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
    cli.env["BUDGET_TIMEZONE"] = "Mars/Olympus"
    assert "BUDGET_TIMEZONE" in cli.fails("list-tenants")


def test_list_models_asks_the_backend(cli: Cli, mock_session: MockProcess) -> None:
    cli("migrate")
    cli("create-tenant", "--name", "acme")
    cli.env["OLLAMA_BASE_URL"] = mock_session.url
    discovered = cli.json("list-models")["models"]
    assert "llama3.2:latest" in discovered
    assert cli("list-models", "--tenant", "acme").stdout == ""  # allowlist empty: nothing
    cli("set-models", "--tenant", "acme", "--models", "llama3.2,not-installed")
    assert cli.json("list-models", "--tenant", "acme")["models"] == ["llama3.2:latest"]
    cli.env["OLLAMA_BASE_URL"] = "http://127.0.0.1:1"
    assert "did not list its models" in cli.fails("list-models")
