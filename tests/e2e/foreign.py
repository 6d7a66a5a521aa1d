"""Clients that live outside the project's environment, installed on first use and run
as programs that report what they saw as JSON: the npm SDKs (``tests/node``, from its
``package-lock.json``) and LiteLLM (its own virtual environment, from
``tests/litellm/requirements.txt``, so its many pins never touch ``uv.lock``).

LiteLLM's environment lives under ``NZ_FOREIGN_DIR`` (default
``~/.cache/neuronetz-foreign``), one folder per requirements file; delete it to install
afresh. A lock serialises installs, so two test sessions never build one environment at
once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
NODE = TESTS / "node"
LITELLM = TESTS / "litellm"


def _tool(name: str, how: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is needed for the foreign-client tests; install it: {how}")
    return found


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], **kwargs: Any) -> None:
    finished = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{finished.stdout}{finished.stderr}")


def node_program() -> list[str]:
    """``node tests/node/clients.mjs``, with ``node_modules`` as the lockfile says (CI
    runs ``npm ci`` itself; a fresh clone gets it here)."""
    node = _tool("node", "apt-get install nodejs npm")
    installed = NODE / "node_modules" / ".package-lock.json"  # npm ci writes it last
    # Not inside tests/node: npm ci starts by deleting node_modules.
    with _locked(Path(tempfile.gettempdir()) / "neuronetz-npm-ci.lock"):
        stale = (
            not installed.exists()
            or installed.stat().st_mtime < (NODE / "package-lock.json").stat().st_mtime
        )
        if stale:
            npm = _tool("npm", "apt-get install nodejs npm")
            _run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE)
    return [node, str(NODE / "clients.mjs")]


def litellm_python() -> Path:
    """The interpreter of LiteLLM's environment, installed unless it is there."""
    requirements = LITELLM / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    base = Path(os.environ.get("NZ_FOREIGN_DIR") or Path.home() / ".cache" / "neuronetz-foreign")
    root = base / f"litellm-{digest}"
    python = root / "bin" / "python"
    done = root / ".installed"
    with _locked(base / f"{root.name}.lock"):
        if not done.exists():
            uv = os.environ.get("UV") or _tool("uv", "python3 -m pip install uv")
            _run([uv, "venv", "--quiet", "--clear", "--python", sys.executable, str(root)])
            # Compiled once here: the machine sets PYTHONDONTWRITEBYTECODE, and LiteLLM
            # is thousands of modules.
            install = [uv, "pip", "install", "--quiet", "--compile-bytecode"]
            _run([*install, "--python", str(python), "-r", str(requirements)])
            done.touch()
    return python


def report(argv: list[str], config: dict[str, str], *, env: dict[str, str] | None = None) -> Any:
    """Run a client program with ``config`` as JSON on stdin; its last line of stdout is
    its report."""
    finished = subprocess.run(
        argv,
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert finished.returncode == 0, f"{argv} failed:\n{finished.stdout}\n{finished.stderr}"
    return json.loads(finished.stdout.strip().splitlines()[-1])
