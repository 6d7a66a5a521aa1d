"""The commands the documentation gives, run as written: every command in
docs/OPERATIONS.md against a fresh PostgreSQL database, and the README's own sequence
(create a tenant and a key, start the mock and the gateway, call it with the key), so
neither can drift from what the CLI does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nz_core import admin as admin_ops
from nz_core.database import create_engine
from nz_core.models import normalize_model
from nz_mock_ollama import DEFAULT_MODELS
from tests import services
from tests.cli.runner import run_cli
from tests.processes import MockProcess, free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "OPERATIONS.md"
README = ROOT / "README.md"
PLACEHOLDER = "nz_Ab3dE6gH9"
# What the README says to substitute: "any free ports will do", "your key in place of nz_…".
README_PORTS = ("11434", "8080")
README_KEY = "nz_…"
# The README's commands that run until stopped.
SERVERS = ("uv run nz-mock-ollama ", "uv run neuronetz-gateway serve")


def runs_until_stopped(line: str) -> bool:
    return any(server in line for server in SERVERS)


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


def readme_lines() -> list[str]:
    """The lines of the README's bash blocks after the demo's, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    return [
        line.strip()
        for block in blocks
        if "neuronetz-gateway demo" not in block
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def _readme_env(tmp_path: Path) -> dict[str, str]:
    """A shell as a reader has it, in an empty folder: `uv run` finds the project through
    UV_PROJECT, so ./neuronetz.db lands here and not in the repository."""
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv is not None, "uv is needed to run the README's commands (pip install uv)"
    path = os.pathsep.join([str(Path(uv).parent), os.environ.get("PATH", "")])
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "UV_CACHE_DIR")}
    return env | {"PATH": path, "UV_PROJECT": str(ROOT), "PWD": str(tmp_path)}


def _with_ports(line: str, ports: dict[str, str]) -> str:
    for documented, port in ports.items():
        line = re.sub(rf"(?<![0-9]){documented}(?![0-9])", port, line)
    return line


def test_the_readme_sequence_runs_as_written(tmp_path: Path) -> None:
    lines = readme_lines()
    first_server = next(i for i, line in enumerate(lines) if runs_until_stopped(line))
    admin_lines = lines[:first_server]
    servers = [line for line in lines[first_server:] if runs_until_stopped(line)]
    calls = [line for line in lines[first_server:] if not runs_until_stopped(line)]
    assert len(servers) == 2, servers
    assert calls, "the README never calls the gateway it started"
    assert any(line.startswith("uv run neuronetz-gateway migrate") for line in admin_lines)

    env = _readme_env(tmp_path)
    state = tmp_path / "environment"
    script = "\n".join(["set -euo pipefail", *admin_lines, f"env -0 > {shlex.quote(str(state))}"])
    admin = subprocess.run(
        ["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert admin.returncode == 0, admin.stderr
    key = re.search(r"^(nz_[0-9A-Za-z]{52})$", admin.stdout, re.MULTILINE)
    assert key is not None, admin.stdout
    prefix = key.group(1)[:12]
    assert f"{prefix} daily=1000000 monthly=none total=none" in admin.stdout
    assert re.search(rf"^{prefix} status=active name='server-1' ", admin.stdout, re.MULTILINE)
    assert (tmp_path / "neuronetz.db").exists()

    exported = dict(item.split("=", 1) for item in state.read_text().split("\0") if "=" in item)
    ports = {documented: str(free_port()) for documented in README_PORTS}
    started: list[subprocess.Popen[bytes]] = []
    try:
        for number, line in enumerate(servers):
            with (tmp_path / f"server-{number}.log").open("wb") as log:
                started.append(
                    subprocess.Popen(
                        ["bash", "-c", _with_ports(line, ports).removesuffix("&").strip()],
                        env=exported,
                        cwd=tmp_path,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own group: uv, bash and the server
                    )
                )
        base = f"http://127.0.0.1:{ports['8080']}"
        wait_until_healthy(started[-1], base, tmp_path / f"server-{len(servers) - 1}.log", 60)
        for line in calls:
            command = _with_ports(line, ports).replace(README_KEY, key.group(1))
            assert README_KEY not in command
            assert _models_listed(command, exported, tmp_path) == _allowed(admin_lines)
    finally:
        for process in reversed(started):
            _stop_group(process)

    async def budget() -> int | None:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'neuronetz.db'}")
        try:
            return (await admin_ops.get_budget(engine, prefix)).daily
        finally:
            await engine.dispose()

    assert asyncio.run(budget()) == 1_000_000


def _allowed(admin_lines: list[str]) -> list[str]:
    """The models the README's tenant may use: its allowlist, as far as the mock has them."""
    (models,) = [
        args[args.index("--models") + 1]
        for args in (shlex.split(line, comments=True) for line in admin_lines)
        if args[:4] == ["uv", "run", "neuronetz-gateway", "set-models"]
    ]
    return sorted(set(map(normalize_model, models.split(","))) & set(DEFAULT_MODELS))


def _models_listed(command: str, env: dict[str, str], cwd: Path) -> list[str]:
    """The models the README's call lists for the new key; the gateway may still be
    discovering the backend's models for a moment after it started."""
    deadline = time.monotonic() + 20
    while True:
        called = subprocess.run(
            ["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
        )
        assert called.returncode == 0, called.stderr
        answer = json.loads(called.stdout)
        if "data" in answer or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "data" in answer, answer
    return sorted(model["id"] for model in answer["data"])


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def test_what_users_read_points_nowhere_outside_the_repository(tmp_path: Path) -> None:
    """The design documents the project was built from are not in the repository: the
    README, docs/, the packages' READMEs and every command's --help stand alone."""
    outside = re.compile(r"\bSPEC\b|SPEC\.md|WIRE\.md|shared/")
    pages = [
        README,
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted(ROOT.glob("packages/*/README.md")),
    ]
    found = [
        f"{page.relative_to(ROOT)}:{number}"
        for page in pages
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        if outside.search(line)
    ]
    top = run_cli(["--help"], {}, tmp_path)
    commands = re.findall(r"^  ([a-z-]+) ", top.stdout.split("Commands:")[1], re.MULTILINE)
    assert {"demo", "serve", "create-key", "set-budget"} <= set(commands)
    helps = {"": top.stdout} | {c: run_cli([c, "--help"], {}, tmp_path).stdout for c in commands}
    found += [f"neuronetz-gateway {c} --help" for c, text in helps.items() if outside.search(text)]
    assert found == []
