"""The import boundaries of STYLE.md item 1 hold, and the check would catch a breach."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def run_lint(cwd: Path, pythonpath: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=cwd,
        env={"PYTHONPATH": pythonpath, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_contracts_are_kept() -> None:
    result = run_lint(ROOT, "")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_domain_module_importing_io_breaks_the_contract(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    for package in ("nz-core", "nz-proxy", "nz-cli", "nz-mock-ollama"):
        shutil.copytree(ROOT / "packages" / package / "src", packages / package / "src")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    windows = packages / "nz-core" / "src" / "nz_core" / "windows.py"
    windows.write_text(windows.read_text() + "\nimport sqlalchemy  # a breach\n")
    paths = ":".join(str(p / "src") for p in packages.iterdir())
    result = run_lint(tmp_path, paths)
    assert result.returncode != 0
    assert "The nz_core domain does no I/O BROKEN" in result.stdout
    assert "nz_core.windows -> sqlalchemy" in result.stdout
