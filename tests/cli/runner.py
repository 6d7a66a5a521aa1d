"""The `neuronetz-gateway` command run in this process: its entry point with its own
environment, working directory, stdout and stderr, and its exit status, as a process
would give them. It costs milliseconds where a process costs a second of start-up."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from unittest import mock

from nz_cli.main import main

__all__ = ["run_cli"]


def run_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``neuronetz-gateway <args>`` with exactly ``env``, from ``cwd``."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        mock.patch.dict(os.environ, env, clear=True),
        contextlib.chdir(cwd),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
