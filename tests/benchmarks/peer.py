"""LiteLLM proxy, the peer, in a throwaway virtual environment.

It is never a project dependency: each run makes a fresh venv in the run's scratch
directory with ``uv`` (``pip`` when uv is absent) and installs ``litellm[proxy]``
from the registry, then serves it with one worker, a master key, and the backend
behind its Ollama chat provider (``ollama_chat/…``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.processes import free_port, wait_for_port

__all__ = ["MASTER_KEY", "Peer", "install_litellm", "litellm_proxy"]

MASTER_KEY = "sk-neuronetz-bench-master"


@dataclass(frozen=True)
class Peer:
    """A running LiteLLM proxy: its URL, its root pid and the LiteLLM version."""

    url: str
    pid: int
    version: str


def install_litellm(venv: Path) -> Path:
    """A new venv with ``litellm[proxy]``; returns its ``litellm`` script."""
    uv = shutil.which("uv")
    if uv:
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            [uv, "pip", "install", "-q", "litellm[proxy]"],
            check=True,
            env={**os.environ, "VIRTUAL_ENV": str(venv)},
        )
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    return venv / "bin" / "litellm"


def _version(venv: Path) -> str:
    completed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout.strip()


def _config(backend: str) -> str:
    # JSON is YAML; LiteLLM reads it with its YAML loader.
    return json.dumps(
        {
            "model_list": [
                {
                    "model_name": "llama3.2",
                    "litellm_params": {"model": "ollama_chat/llama3.2", "api_base": backend},
                }
            ],
            "general_settings": {"master_key": MASTER_KEY},
        }
    )


@contextmanager
def litellm_proxy(venv: Path, backend: str, scratch: Path) -> Iterator[Peer]:
    """Serve LiteLLM (one worker) in front of ``backend`` until the block ends."""
    script = venv / "bin" / "litellm"
    config = scratch / f"litellm-{free_port()}.yaml"
    config.write_text(_config(backend))
    port = free_port()
    env = {
        **os.environ,
        # No network here: use the bundled model price map instead of fetching it.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }
    with (scratch / f"litellm-{port}.log").open("wb") as log:
        process = subprocess.Popen(
            [str(script), "--config", str(config), "--port", str(port), "--num_workers", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=scratch,
            start_new_session=True,
        )
    try:
        wait_for_port(port, process, timeout=120)
        yield Peer(f"http://127.0.0.1:{port}", process.pid, _version(venv))
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
