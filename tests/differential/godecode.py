"""Build and run ``godecode`` (the Go program beside this module): what Ollama reads.

Ollama binds request bodies with Go's ``encoding/json``; no Python parser reproduces its
key matching exactly (case-insensitive with Unicode simple folding, last key wins, the
rest of the body after the first value ignored), so the differential test asks Go
itself. :func:`build` compiles the program (a session fixture calls it once) with the
``go`` found on ``PATH`` (Debian: ``apt-get install golang-go``); a missing toolchain
fails the test loudly, it never skips it. :class:`GoDecoder` keeps one process and
exchanges one NDJSON line each way per body.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Self

__all__ = ["GoDecoder", "GoReading", "GoToolchainMissing", "build"]

SOURCE: Final = Path(__file__).with_name("godecode")
_BUILD_TIMEOUT_S: Final = 300
_EXIT_TIMEOUT_S: Final = 30


class GoToolchainMissing(RuntimeError):
    """``go`` is not installed: the differential test cannot run (and must not pass)."""


@dataclass(frozen=True, slots=True)
class GoReading:
    """What Ollama reads from one body; ``error`` set means Ollama answers 400 (or, for a
    wrongly typed option, 500) and reads nothing else."""

    error: str | None
    model: str | None
    num_predict: int | None
    num_ctx: int | None
    keep_alive_ns: int | None
    stream: bool | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GoReading:
        return cls(
            error=data["error"],
            model=data["model"],
            num_predict=data["num_predict"],
            num_ctx=data["num_ctx"],
            keep_alive_ns=data["keep_alive_ns"],
            stream=data["stream"],
        )


def build(directory: Path) -> Path:
    """Compile ``godecode`` into ``directory``; the path of the program.

    Raises :class:`GoToolchainMissing` when ``go`` is not on ``PATH``.
    """
    go = shutil.which("go")
    if go is None:
        raise GoToolchainMissing(
            "the parser-differential test needs the Go toolchain to build "
            f"{SOURCE.relative_to(SOURCE.parents[2])}: install it with "
            "`apt-get install golang-go` (Debian/Ubuntu) and put `go` on PATH"
        )
    target = directory / "godecode"
    env = {
        **os.environ,
        # Standard library only: never reach for the network or another toolchain.
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }
    if "GOCACHE" not in env and "HOME" not in env and "XDG_CACHE_HOME" not in env:
        env["GOCACHE"] = str(directory / "go-cache")
    result = subprocess.run(
        [go, "build", "-o", str(target), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=_BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"go build of {SOURCE} failed:\n{result.stdout}{result.stderr}")
    return target


class GoDecoder:
    """One running ``godecode``; use as a context manager (the process is stopped by its
    own pid on exit)."""

    def __init__(self, binary: Path) -> None:
        self._process = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, path: str, body: bytes) -> GoReading:
        """How Ollama's handler for ``path`` binds ``body``."""
        stdin, stdout = self._pipes()
        line = json.dumps({"path": path, "body": base64.b64encode(body).decode("ascii")})
        stdin.write(line.encode() + b"\n")
        stdin.flush()
        answer = stdout.readline()
        if not answer:
            code = self._process.poll()
            raise RuntimeError(f"godecode ended without an answer (exit status {code})")
        return GoReading.from_json(json.loads(answer))

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        stdin, stdout = self._process.stdin, self._process.stdout
        if stdin is None or stdout is None or self._process.poll() is not None:
            raise RuntimeError("godecode is not running")
        return stdin, stdout

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()  # end of input: the program exits
        try:
            self._process.wait(timeout=_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
