"""`neuronetz-gateway serve` as an operator runs it (SPEC §8, §9, §11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai

from tests.benchmarks import procstat
from tests.e2e.conftest import Deployment, gateway_env
from tests.processes import running_gateway


def serve(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return subprocess.run(
        [sys.executable, "-m", "nz_cli", "serve", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_refuses_what_cannot_work(tmp_path: Path, sqlite_url: str) -> None:
    several = serve({"DATABASE_URL": sqlite_url, "GATEWAY_WORKERS": "2"}, tmp_path)
    assert several.returncode != 0
    assert "REDIS_URL" in several.stderr
    flag = serve({"DATABASE_URL": sqlite_url}, tmp_path, "--workers", "3")
    assert "REDIS_URL" in flag.stderr
    for variable, value in (
        ("GATEWAY_PORT", "eighty"),
        ("CIRCUIT_BREAKER_FAILURES", "0"),
        ("OLLAMA_BASE_URL", "ftp://x"),
        ("LOG_LEVEL", "loud"),
    ):
        bad = serve({"DATABASE_URL": sqlite_url, variable: value}, tmp_path)
        assert bad.returncode != 0
        assert bad.stderr.startswith(f"error: {variable}"), bad.stderr
    fresh = serve({"DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"}, tmp_path)
    assert fresh.returncode != 0
    assert "migrate" in fresh.stderr


def test_a_cli_made_key_through_serve(deployment: Deployment, tmp_path: Path) -> None:
    """The operator's path: a key from `create-key`, a gateway from `serve` (two workers
    when Redis shares their state, one in embedded mode)."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env["DATABASE_URL"] = deployment.database_url
    run = [sys.executable, "-m", "nz_cli"]
    tenant = f"ops-{deployment.mode}"
    subprocess.run(
        [*run, "create-tenant", "--name", tenant, "--allow-all-models"], env=env, check=True
    )
    created = subprocess.run(
        [*run, "create-key", "--tenant", tenant, "--name", "cli"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key = created.stdout.strip()
    settings = gateway_env(deployment.mock.url, deployment.database_url, deployment.redis_url)
    workers = 2 if deployment.redis_url else 1
    settings["GATEWAY_WORKERS"] = str(workers)
    with running_gateway(tmp_path, settings) as gateway:
        sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        with sdk:
            for _ in range(8):  # spread over the workers
                answer = sdk.chat.completions.create(
                    model="llama3.2", messages=[{"role": "user", "content": "hi"}]
                )
                assert answer.choices[0].message.content
        assert httpx.get(gateway.url + "/readyz").status_code == 200
        assert f"worker-{workers}" in gateway.output()
        # The CLI became the slim serving process (same pid), and the workers it forked
        # carry nothing of the CLI: pydantic's native core is not even mapped.
        serving = gateway.process.pid
        argv = Path(f"/proc/{serving}/cmdline").read_bytes().split(b"\0")
        assert argv[1:3] == [b"-m", b"nz_proxy.server"]
        below = procstat.tree(serving)[1:]
        assert len(below) == workers
        for worker in below:
            assert b"pydantic_core" not in Path(f"/proc/{worker}/maps").read_bytes()
