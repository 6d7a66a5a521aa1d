"""Real processes the tests start: the mock Ollama and the gateway.

Each process logs to a file, never a pipe (a pipe nobody drains can block the child),
and is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

_LISTENING = re.compile(r"listening on (http://\S+)")
_SCRIPT = Path(sys.executable).with_name("nz-mock-ollama")


@dataclass(frozen=True)
class MockProcess:
    """A running mock: its base URL, its process and its stderr log."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stderr(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.log.read_text()


def mock_command(*args: str) -> list[str]:
    """The console script when installed (it is in the uv workspace), else `python -m`."""
    if _SCRIPT.exists():
        return [str(_SCRIPT), *args]
    return [sys.executable, "-m", "nz_mock_ollama", *args]


def wait_for_url(process: subprocess.Popen[bytes], log: Path, timeout: float = 15.0) -> str:
    """Read the startup line from the log file and return the URL it names."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := _LISTENING.search(log.read_text()):
            return found.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"mock exited with {process.returncode}: {log.read_text()}")
        time.sleep(0.02)
    raise RuntimeError(f"mock did not start in {timeout}s: {log.read_text()}")


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal the process and reap it; kill it if it hangs (and fail the test)."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return process.returncode


@contextmanager
def run_mock(log_dir: Path, *args: str) -> Iterator[MockProcess]:
    """Start `nz-mock-ollama --port 0 <args>` and stop it afterwards."""
    log = log_dir / f"mock-{time.monotonic_ns()}.log"
    # stderr goes to a file, not a pipe: a pipe nobody drains could block the mock.
    with log.open("wb") as sink:
        process = subprocess.Popen(
            mock_command("--port", "0", *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        url = wait_for_url(process, log)
        yield MockProcess(url, process, log)
    finally:
        stop_process(process)


#: What the three nodes of `run_mock_nodes` have installed: every chat model is on two
#: nodes of three and missing from the third, so routing among warm and cold nodes and
#: around a node that lacks the model can all be set up.
THREE_NODE_CATALOGUES: tuple[tuple[str, ...], ...] = (
    ("llama3.2:latest", "qwen2.5:7b", "all-minilm:latest"),
    ("llama3.2:latest", "mistral:latest", "all-minilm:latest"),
    ("qwen2.5:7b", "mistral:latest", "nomic-embed-text:latest"),
)


@dataclass(frozen=True)
class MockNodes:
    """Several mock Ollama nodes served by one process, each with its own state: their
    base URLs in the order of their catalogues."""

    urls: tuple[str, ...]
    process: subprocess.Popen[bytes]
    log: Path

    def stderr(self) -> str:
        return self.log.read_text()


def wait_for_urls(
    process: subprocess.Popen[bytes], log: Path, count: int, timeout: float = 15.0
) -> tuple[str, ...]:
    """Read `count` startup lines from the log and return the URLs they name, in order."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _LISTENING.findall(log.read_text())
        if len(found) >= count:
            return tuple(found[:count])
        if process.poll() is not None:
            raise RuntimeError(f"mock exited with {process.returncode}: {log.read_text()}")
        time.sleep(0.02)
    raise RuntimeError(f"mock did not start {count} nodes in {timeout}s: {log.read_text()}")


@contextmanager
def run_mock_nodes(
    log_dir: Path,
    *args: str,
    catalogues: Sequence[Sequence[str]] = THREE_NODE_CATALOGUES,
) -> Iterator[MockNodes]:
    """Start one `nz-mock-ollama` serving a node per catalogue, each on a free port;
    `args` are further flags (once for every node, or once per node in order, e.g.
    `"--parallel", "1", "--parallel", "2", "--parallel", "1"`)."""
    log = log_dir / f"mock-nodes-{time.monotonic_ns()}.log"
    nodes = [
        flag for models in catalogues for flag in ("--port", "0", "--models", ",".join(models))
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            mock_command(*nodes, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        urls = wait_for_urls(process, log, len(catalogues))
        yield MockNodes(urls, process, log)
    finally:
        stop_process(process)


def free_port() -> int:
    """A port nothing listens on right now (the caller binds it soon after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(
    port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 10.0
) -> None:
    """Return once something accepts connections on the port (or fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


@dataclass(frozen=True)
class GatewayProcess:
    """A running `neuronetz-gateway serve`: its URL, process group and log."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (Granian's main process and its workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


def gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nz_cli", *args]


def wait_until_healthy(
    process: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not start in {timeout}s: {log.read_text()}")


def start_gateway(log_dir: Path, env: dict[str, str], port: int | None = None) -> GatewayProcess:
    """Start the gateway on ``port`` (default: a free one) with exactly ``env`` (over a
    clean base)."""
    port = port or free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")},
        "PYTHONUNBUFFERED": "1",
        "LOG_FORMAT": "json",
        **env,
        "GATEWAY_PORT": str(port),
    }
    log = log_dir / f"gateway-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            gateway_command("serve"),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=log_dir,
            start_new_session=True,  # its own process group, so workers die with it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, log)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return GatewayProcess(url, process, log, full_env)


def stop_gateway(gateway: GatewayProcess, timeout: float = 40.0) -> int:
    """SIGTERM (graceful), then wait; SIGKILL the group if it hangs (and fail)."""
    if gateway.process.poll() is None:
        gateway.kill(signal.SIGTERM)
        try:
            return gateway.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            gateway.kill(signal.SIGKILL)
            gateway.process.wait()
            raise
    return gateway.process.returncode


@contextmanager
def running_gateway(log_dir: Path, env: dict[str, str]) -> Iterator[GatewayProcess]:
    gateway = start_gateway(log_dir, env)
    try:
        yield gateway
    finally:
        stop_gateway(gateway)


@dataclass
class RedisServer:
    """A private redis-server, so a test can stop and restart it."""

    port: int
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with (self.log_dir / f"redis-{self.port}.log").open("ab") as log:
            self.process = self._spawn(log)
        wait_for_port(self.port, self.process)

    def _spawn(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def private_redis(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), log_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
