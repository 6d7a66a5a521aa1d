"""Real processes the tests start: the mock Ollama now, the gateway later.

Each process logs to a file, never a pipe (a pipe nobody drains can block the child),
and is stopped by its own pid.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
