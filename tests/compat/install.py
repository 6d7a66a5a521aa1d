"""Open WebUI in a throwaway virtual environment, outside the project's own.

``uv run python -m tests.compat.install`` installs it (or finds it installed) and
prints how long that took. The environment lives under ``NZ_COMPAT_DIR`` (default
``~/.cache/neuronetz-compat``), one folder per pinned version; delete it to install
afresh. pip, not uv, installs it: pip reads the machine's own configuration, where the
CPU build of torch is found.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

OPEN_WEBUI: Final = "open-webui==0.12.4"
# First, and pinned: left to open-webui's requirements pip would pick the newest torch,
# and with it gigabytes of CUDA libraries this suite never uses.
TORCH: Final = "torch==2.13.0"
PYTHON: Final = "python3.11"  # what open-webui 0.12 supports, and what the machine has


@dataclass(frozen=True)
class Installed:
    root: Path
    seconds: float  # 0 when it was there already

    @property
    def bin(self) -> Path:
        return self.root / "bin"


def home() -> Path:
    base = os.environ.get("NZ_COMPAT_DIR") or str(Path.home() / ".cache" / "neuronetz-compat")
    return Path(base) / OPEN_WEBUI.replace("==", "-")


def install(log: Path | None = None) -> Installed:
    """The environment with Open WebUI, installed unless a finished install is there."""
    root = home()
    done = root / ".installed"
    if done.exists():
        return Installed(root, 0.0)
    started = time.monotonic()
    log = log or root.parent / f"{root.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([_python(), "-m", "venv", "--clear", str(root)], check=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off"]
    with log.open("ab") as sink:
        for step in ([*pip, "--upgrade", "pip"], [*pip, TORCH], [*pip, OPEN_WEBUI, TORCH]):
            sink.write(f"$ {' '.join(step)}\n".encode())
            sink.flush()
            finished = subprocess.run(step, stdout=sink, stderr=subprocess.STDOUT, check=False)
            if finished.returncode != 0:
                raise RuntimeError(f"{' '.join(step)} failed; see {log}")
    seconds = time.monotonic() - started
    done.write_text(f"{seconds:.0f}\n")
    return Installed(root, seconds)


def _python() -> str:
    # venv needs a real interpreter of the right version, not the project's own venv.
    found = subprocess.run(
        ["/usr/bin/env", PYTHON, "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        raise RuntimeError(f"{PYTHON} is needed to install {OPEN_WEBUI}")
    return found.stdout.strip()


if __name__ == "__main__":
    installed = install()
    print(f"{OPEN_WEBUI} in {installed.root} (installed in {installed.seconds:.0f} s)")
    sys.exit(0)
