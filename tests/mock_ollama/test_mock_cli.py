"""The `nz-mock-ollama` command: flags, startup line, signals, and listen failures."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import mock_command, run_mock, stop_process, wait_for_url

from .frames import ndjson_frames

CHAT = {"model": "foo", "messages": [{"role": "user", "content": "hi"}]}


def test_flags_shape_the_mock(tmp_path: Path) -> None:
    with (
        run_mock(
            tmp_path,
            "--models",
            "foo, bar:7b ,my-embed",
            "--ollama-version",
            "9.9.9",
            "--response-tokens",
            "3",
            "--token-rate",
            "0",
            "--fail-next",
            "1",
            "--fail-status",
            "502",
            "--fault-paths",
            "/api/tags",
        ) as mock,
        httpx.Client(base_url=mock.url) as http,
    ):
        assert "listening on http://127.0.0.1:" in mock.stderr()
        assert len(mock.stderr().splitlines()) == 1
        assert http.get("/api/tags").status_code == 502
        names = [m["name"] for m in http.get("/api/tags").json()["models"]]
        assert names == ["foo:latest", "bar:7b", "my-embed:latest"]
        assert http.get("/api/version").json() == {"version": "9.9.9"}
        frames = ndjson_frames(http.post("/api/chat", json=CHAT).content)
        assert frames[-1]["eval_count"] == 3
        chat_embed = http.post("/api/chat", json={**CHAT, "model": "my-embed"})
        assert chat_embed.status_code == 400
        vector = http.post("/api/embed", json={"model": "my-embed", "input": "x"}).json()
        assert len(vector["embeddings"][0]) == 768


def test_stream_fault_flags(tmp_path: Path) -> None:
    with (
        run_mock(
            tmp_path,
            "--token-rate",
            "0",
            "--error-after",
            "2",
            "--error-message",
            "boom",
            "--delay-first-byte",
            "0.3",
        ) as mock,
        httpx.Client(base_url=mock.url) as http,
    ):
        started = time.monotonic()
        frames = ndjson_frames(http.post("/api/chat", json={**CHAT, "model": "llama3.2"}).content)
        assert time.monotonic() - started >= 0.3
        assert frames[-1] == {"error": "boom"}
        assert len(frames) == 3


def test_refuse_connections_at_startup(tmp_path: Path) -> None:
    with run_mock(tmp_path, "--refuse-connections", "0.6") as mock:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            httpx.get(mock.url)
        while True:
            try:
                httpx.get(mock.url).raise_for_status()
                break
            except httpx.ConnectError:
                assert time.monotonic() - started < 5
                time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly_even_mid_stream(tmp_path: Path, sig: int) -> None:
    with run_mock(tmp_path, "--token-rate", "5") as mock:
        with (
            httpx.Client(base_url=mock.url) as http,
            http.stream("POST", "/api/chat", json={**CHAT, "model": "llama3.2"}) as reply,
        ):
            next(reply.iter_lines())
            started = time.monotonic()
            assert stop_process(mock.process, sig) == 0
        assert time.monotonic() - started < 3
        assert "Traceback" not in mock.stderr()


def test_python_dash_m_and_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "nz_mock_ollama", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flags_exit_with_usage() -> None:
    result = subprocess.run(
        mock_command("--response-tokens", "0"),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert "response_tokens must be >= 1" in result.stderr


def test_wait_for_url_reports_an_early_exit(tmp_path: Path) -> None:
    # The fixture helper itself must fail loudly rather than hang.
    log = tmp_path / "log"
    with log.open("wb") as sink:
        process = subprocess.Popen(mock_command("--bogus-flag"), stderr=sink)
    with pytest.raises(RuntimeError, match="exited"):
        wait_for_url(process, log, timeout=10)
    process.wait()
