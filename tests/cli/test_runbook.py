"""Every command in docs/OPERATIONS.md, run as written against a fresh PostgreSQL
database, so the runbook cannot drift from what the CLI does."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import services
from tests.cli.runner import run_cli
from tests.processes import MockProcess, free_port, wait_until_healthy

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"
PLACEHOLDER = "nz_Ab3dE6gH9"


def documented_commands() -> list[list[str]]:
    """Every `neuronetz-gateway …` line of the runbook's bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", RUNBOOK.read_text(), re.DOTALL)
    return [
        shlex.split(line, comments=True)
        for block in blocks
        for line in block.splitlines()
        if line.strip().startswith("neuronetz-gateway ")
    ]


@pytest.fixture
async def database() -> AsyncIterator[str]:
    name = await services.create_database("runbook")
    try:
        yield services.pg_url(name, driver="postgresql")
    finally:
        await services.drop_database(name)


def test_the_runbook_covers_every_command() -> None:
    documented = {command[1] for command in documented_commands()}
    expected = {
        "migrate", "serve", "create-tenant", "list-tenants", "create-key", "list-keys",
        "revoke-key", "set-limits", "set-budget", "set-models", "set-prompt-log",
        "list-models", "show-usage",
    }  # fmt: skip
    assert expected <= documented


def test_every_documented_command_works(
    database: str, mock_session: MockProcess, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env |= {"DATABASE_URL": database, "OLLAMA_BASE_URL": mock_session.url}
    prefix = None
    for command in documented_commands():
        args = [prefix if arg == PLACEHOLDER and prefix else arg for arg in command[1:]]
        assert PLACEHOLDER not in args, "the runbook uses a key before creating one"
        if args[0] == "serve":
            _serve_briefly(args, env, tmp_path)
            continue
        result = run_cli(args, env, tmp_path)
        assert result.returncode == 0, (command, result.stderr)
        if args[0] == "create-key":
            prefix = result.stdout.strip()[:12]
            assert re.fullmatch(r"nz_[0-9A-Za-z]{52}", result.stdout.strip())
        if args[0] == "list-tenants":
            assert "acme rpm=120 tpm=200000 concurrent=8 allow_all_models=false" in result.stdout
        if args[0] == "list-keys" and "--json" not in args:
            assert re.fullmatch(
                rf"{prefix} status=active name='prod-server-1' created=\S+\n", result.stdout
            )
        if args[0] == "show-usage" and "--json" not in args:
            assert re.fullmatch(r"requests=\d+ tokens_in=\d+ tokens_out=\d+\n", result.stdout)
    assert prefix is not None


def _serve_briefly(args: list[str], env: dict[str, str], tmp_path: Path) -> None:
    """`serve` runs until stopped: start it as documented, probe it, SIGTERM it."""
    port = str(free_port())
    previous = ["", *args[:-1]]
    args = [port if before == "--port" else arg for before, arg in zip(previous, args, strict=True)]
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "nz_cli", *args],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}", log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=40) == 0
