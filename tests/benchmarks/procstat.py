"""CPU time and resident memory of a process tree, read from ``/proc``.

A Granian server is a main process and its workers; LiteLLM is uvicorn and its
workers; so every figure is summed over the tree below the pid the harness started.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuClock", "children", "cpu_seconds", "rss_bytes", "tree"]

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may hold spaces: split after it.
    return raw[raw.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list, deduplicated)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return sorted(found)


def tree(pid: int) -> list[int]:
    """``pid`` and every descendant still alive."""
    pids = [pid]
    index = 0
    while index < len(pids):
        with contextlib.suppress(FileNotFoundError):
            pids.extend(children(pids[index]))
        index += 1
    return pids


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU seconds the processes used so far."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except FileNotFoundError:
            continue
        # Fields 14 and 15 of stat(5) (utime, stime), counted from after the name.
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def rss_bytes(pid: int) -> int:
    """Resident set size of one process."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


@dataclass
class CpuClock:
    """CPU seconds a process tree spends between :meth:`start` and :meth:`stop`."""

    root: int
    _pids: list[int] | None = None
    _started: float = 0.0

    def start(self) -> None:
        self._pids = tree(self.root)
        self._started = cpu_seconds(self._pids)

    def stop(self) -> float:
        assert self._pids is not None, "start() first"
        return cpu_seconds(self._pids) - self._started
