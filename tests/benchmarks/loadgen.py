"""wrk, the native load generator, driven from Python and read back as JSON.

wrk's ``--latency`` table rounds to two digits and stops at p99, so a Lua ``done``
hook prints the exact percentiles (microseconds) as one JSON line instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoadResult", "lua_script", "parse_wrk", "run_wrk"]

_MARK = "WRK-JSON "

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}\\n',
    "{mark}", summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run: the request count, errors, and latency percentiles in µs."""

    connections: int
    requests: int
    duration_s: float
    errors: int
    non_2xx: int
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int
    max_us: int

    @property
    def rps(self) -> float:
        """Successful (2xx/3xx) responses per second."""
        ok = self.requests - self.non_2xx
        return ok / self.duration_s if self.duration_s else 0.0


def _lua_string(text: str) -> str:
    # A Lua long bracket with enough '=' that the text cannot close it early.
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def lua_script(method: str, body: bytes | None, headers: dict[str, str]) -> str:
    """The wrk script: one fixed request, and the JSON summary on exit."""
    lines = [f"wrk.method = {_lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {_lua_string(body.decode())}")
    lines.extend(
        f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}"
        for name, value in headers.items()
    )
    lines.append(_DONE.replace("{mark}", _MARK))
    return "\n".join(lines)


def parse_wrk(output: str, connections: int) -> LoadResult:
    """The result from wrk's stdout (the line the ``done`` hook printed)."""
    for line in output.splitlines():
        if line.startswith(_MARK):
            data = json.loads(line[len(_MARK) :])
            break
    else:
        raise ValueError(f"wrk printed no summary:\n{output}")
    transport = data["connect"] + data["read"] + data["write"] + data["timeout"]
    return LoadResult(
        connections=connections,
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        errors=transport,
        non_2xx=data["status"],
        p50_us=data["p50"],
        p90_us=data["p90"],
        p99_us=data["p99"],
        p999_us=data["p999"],
        max_us=data["max"],
    )


def run_wrk(
    url: str,
    *,
    connections: int,
    duration_s: int,
    method: str = "POST",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: int = 10,
) -> LoadResult:
    """Run wrk with one thread (the other core is the system's) and ``connections``."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="nz-wrk-") as scratch:
        script = Path(scratch) / "request.lua"
        script.write_text(lua_script(method, body, headers or {}))
        completed = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{duration_s}s",
                f"--timeout={int(timeout_s)}s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration_s + timeout_s + 30,
        )
    return parse_wrk(completed.stdout, connections)
