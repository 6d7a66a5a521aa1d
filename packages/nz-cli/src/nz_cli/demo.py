"""``neuronetz-gateway demo``: the whole gateway on a bare machine, in one command.

It migrates a fresh embedded database in a temporary directory, creates a ``demo``
tenant (every model allowed) and a key, starts the mock Ollama and the gateway (with
the playground on) as child processes, and prints the key, the playground's URL and
five curl commands to paste. Ctrl-C (or SIGTERM) stops both children and removes the
directory; the children also die with the demo if it is killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final, TypeVar

import typer

from nz_cli.runner import fail
from nz_core import admin
from nz_core.database import create_engine
from nz_core.migrations import upgrade

__all__ = ["demo", "register"]

T = TypeVar("T")

DEMO_MODEL: Final = "llama3.2"
MOCK_TOKENS_PER_SECOND: Final = "25"  # fast, but visibly a stream
_LISTENING: Final = re.compile(r"listening on (http://\S+)")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it if the demo dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            args,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )


def _wait_for(
    what: str, check: Callable[[], T | None], process: subprocess.Popen[bytes], log: Path
) -> T:
    """Poll ``check`` until it returns something, while the process lives."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {what} stopped: {log.read_text(errors='replace')[-500:]}")
        result = check()
        if result is not None:
            return result
        time.sleep(0.1)
    raise RuntimeError(f"the {what} did not start within 30 s (log: {log})")


def _listening(log: Path) -> str | None:
    found = _LISTENING.search(log.read_text(errors="replace"))
    return found.group(1) if found else None


def _healthy(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as response:  # noqa: S310
            return url if response.status == 200 else None
    except OSError:
        return None


async def _tenant_and_key(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        await admin.create_tenant(engine, "demo", allow_all_models=True)
        created = await admin.create_key(engine, "demo", "demo-key")
        return created.key
    finally:
        await engine.dispose()


def curl_commands(base: str, key: str) -> list[tuple[str, str]]:
    """(what it shows, the command) for the five ready-to-paste examples."""
    auth = f'-H "Authorization: Bearer {key}"'
    hello = '"messages": [{"role": "user", "content": "Say hello"}]'
    return [
        (
            "OpenAI chat, streamed as SSE",
            f'curl -N {base}/v1/chat/completions {auth} -H "Content-Type: application/json" '
            f'-d \'{{"model": "{DEMO_MODEL}", "stream": true, {hello}}}\'',
        ),
        (
            "Ollama chat, streamed as NDJSON",
            f'curl -N {base}/api/chat {auth} -d \'{{"model": "{DEMO_MODEL}", {hello}}}\'',
        ),
        ("the models this key may use", f"curl {base}/v1/models {auth}"),
        ("a wrong key: 401", f'curl -i {base}/v1/models -H "Authorization: Bearer nz_wrong"'),
        (
            "backend administration is refused: 403",
            f'curl -i {base}/api/pull {auth} -d \'{{"model": "{DEMO_MODEL}"}}\'',
        ),
    ]


def demo(
    port: Annotated[int, typer.Option(help="Where the gateway listens.", min=1, max=65535)] = 8080,
) -> None:
    """Run the gateway in front of a mock Ollama on a fresh embedded database, with the
    playground on. Ctrl-C stops everything."""
    host = "127.0.0.1"
    if not _port_free(host, port):
        fail(f"port {port} is already in use; choose another one with --port")
    workdir = Path(tempfile.mkdtemp(prefix="neuronetz-demo-"))
    children: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        database_url = f"sqlite+aiosqlite:///{workdir / 'demo.db'}"
        upgrade(database_url)
        key = asyncio.run(_tenant_and_key(database_url))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
        mock_log = workdir / "mock-ollama.log"
        children.append(
            _spawn(
                [
                    sys.executable,
                    "-m",
                    "nz_mock_ollama",
                    "--host",
                    host,
                    "--port",
                    "0",
                    "--token-rate",
                    MOCK_TOKENS_PER_SECOND,
                ],
                mock_log,
                env,
            )
        )
        mock_url = _wait_for("mock Ollama", lambda: _listening(mock_log), children[0], mock_log)
        gateway_log = workdir / "gateway.log"
        env |= {
            "DATABASE_URL": database_url,
            "OLLAMA_BASE_URL": mock_url,
            "PLAYGROUND_ENABLED": "true",
            "MODEL_DISCOVERY_REFRESH_S": "5",
            "LOG_FORMAT": "console",
            "GATEWAY_WORKERS": "1",
        }
        children.append(
            _spawn(
                [sys.executable, "-m", "nz_cli", "serve", "--host", host, "--port", str(port)],
                gateway_log,
                env,
            )
        )
        base = f"http://{host}:{port}"
        _wait_for("gateway", lambda: _healthy(base), children[1], gateway_log)
        _banner(base, key, workdir)
        while not stop.is_set():
            if any(child.poll() is not None for child in children):
                fail(f"a demo process stopped unexpectedly; see the logs in {workdir}")
            stop.wait(0.5)
        typer.echo("\nstopping the demo …", err=True)
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        for child in reversed(children):
            _stop(child)
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=35)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _banner(base: str, key: str, workdir: Path) -> None:
    lines = [
        "",
        "neuronetz-gateway demo: the gateway in front of a mock Ollama, on embedded storage.",
        "",
        f"API key: {key}",
        f"Playground: {base}/playground",
        "",
        "Try it (paste any of these into another terminal):",
    ]
    for number, (what, command) in enumerate(curl_commands(base, key), start=1):
        lines += ["", f"  {number}. {what}", f"  {command}"]
    lines += [
        "",
        f"Logs and the database are in {workdir} (removed when the demo stops).",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo)
