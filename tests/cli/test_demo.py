"""`neuronetz-gateway demo` on a bare machine (SPEC §12.1): it prints a key, the
playground's URL and five curl commands that do what they promise, and Ctrl-C leaves
no process behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.processes import free_port


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_demo_prints_working_curls_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    with log.open("wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "nz_cli", "demo", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,  # a bare directory: nothing configured, nothing there
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in log.read_text():
            assert demo.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        out = log.read_text()
        key = re.search(r"^API key: (nz_[0-9A-Za-z]{52})$", out, re.MULTILINE)
        assert key is not None
        assert f"http://127.0.0.1:{port}/playground" in out
        assert httpx.get(f"http://127.0.0.1:{port}/playground").status_code == 200
        commands = [line.strip() for line in out.splitlines() if line.strip().startswith("curl ")]
        assert len(commands) == 5
        results = [
            subprocess.run(shlex.split(c), capture_output=True, text=True, timeout=30, check=True)
            for c in commands
        ]
        sse, ndjson, models, unauthorized, pull = (r.stdout for r in results)
        events = [e.removeprefix("data: ") for e in sse.strip().split("\n\n")]
        assert events[-1] == "[DONE]"
        assert "".join(
            json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
        )
        lines = [json.loads(line) for line in ndjson.splitlines()]
        assert lines[-1]["done"] is True
        assert len(lines) > 5
        assert "llama3.2:latest" in {m["id"] for m in json.loads(models)["data"]}
        assert unauthorized.startswith("HTTP/1.1 401")
        assert pull.startswith("HTTP/1.1 403")
        processes = descendants(demo.pid)
        assert len(processes) >= 2  # the mock, the gateway (and its worker)
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        assert demo.wait(timeout=60) == 0
        time.sleep(0.5)
        assert [pid for pid in processes if alive(pid)] == []
        workdir = re.search(r"Logs and the database are in (\S+) ", out)
        assert workdir is not None
        assert not Path(workdir.group(1)).exists()
        assert list(tmp_path.iterdir()) == [log]  # it wrote nothing where it ran
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


def test_demo_says_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "nz_cli", "demo", "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: port {port} is already in use; choose another one with --port"
    )
