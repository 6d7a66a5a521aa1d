"""The serving process (`nz_proxy.server`): what its workers leave out still works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Runs in a fresh interpreter: the block is process-wide. The worker's whole path is
# exercised: the app is built, its lifespan runs, a request is answered, and a
# console-format log line renders an exception (structlog's Rich formatter's fallback).
WORKER = """
import sys
from nz_proxy import server
server.leave_out_unused()
import structlog
from litestar.testing import TestClient
from nz_proxy.app import asgi_app
from nz_proxy.logs import configure_logging
from nz_proxy.settings import load_settings

settings = load_settings(log_format="console")
configure_logging(settings)
with TestClient(asgi_app(settings)) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/models").status_code == 401
try:
    raise ValueError("boom")
except ValueError:
    structlog.get_logger().exception("rendered")
loaded = [name for name in server.UNUSED_IN_WORKERS if sys.modules.get(name) is not None]
print("loaded:", loaded)
"""


def test_a_worker_without_pydantic_or_rich_serves(tmp_path: Path, sqlite_url: str) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", WORKER],
        env={
            "DATABASE_URL": sqlite_url,
            "OLLAMA_BASE_URL": "http://127.0.0.1:9",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "PATH": "/usr/bin:/bin",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert "loaded: []" in ran.stdout
    assert "ValueError: boom" in ran.stdout + ran.stderr
