"""From a run's raw JSON to the figures, the targets, the Markdown table and the plot.

Pure functions of the results dictionary (``run.py`` makes it), so the arithmetic is
tested without running anything. "Added" always means the system's figure minus the
direct figure at the same concurrency, in the same run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CONCURRENCIES",
    "Figures",
    "Target",
    "derive",
    "markdown",
    "plot",
    "splice",
    "targets",
]

CONCURRENCIES = (1, 16, 256)
ADDED_P99_CEILING_MS = 10.0
START = "<!-- results:start -->"
END = "<!-- results:end -->"


@dataclass(frozen=True)
class Figures:
    """One system's derived figures; ``None`` where it was not measured."""

    name: str
    label: str
    added_p50_ms: dict[int, float]
    added_p99_ms: dict[int, float]
    peak_rps: float
    rps_within_ceiling: float | None
    cpu_ms_per_request: dict[int, float]
    ttft_added_ms: float | None = None
    gap_added_ms: float | None = None
    held_completed: int | None = None
    rss_per_worker_mib: float | None = None
    cpu_ms_per_chunk: float | None = None
    redis_calls_per_request: float | None = None
    redis_batched_per_request: float | None = None
    db_transactions_per_request: float | None = None
    argon2_share: float | None = None


def _by_connections(levels: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {level["connections"]: level for level in levels}


def _hot_calls(commands: dict[str, int]) -> int:
    """Admits and settles. Runs that named the scripts also leave out the lease
    renewals and reaps, which run on timers, not per request."""
    if any(name.startswith("evalsha:") for name in commands):
        return commands.get("evalsha:admit", 0) + commands.get("evalsha:settle", 0)
    return commands.get("evalsha", 0)


def _clean(level: dict[str, Any]) -> bool:
    return level["errors"] == 0 and level["non_2xx"] == 0


def derive(results: dict[str, Any]) -> list[Figures]:
    """Every system's figures, the direct baseline first."""
    systems = results["systems"]
    direct = _by_connections(systems["direct"]["levels"])
    direct_stream = systems["direct"].get("stream", {}).get("timed")
    out = []
    for name, system in systems.items():
        # A level where nothing finished in time has no latency to report.
        levels = {
            c: level
            for c, level in _by_connections(system.get("levels", [])).items()
            if level["requests"]
        }
        added_p50 = {
            c: (levels[c]["p50_us"] - direct[c]["p50_us"]) / 1000 for c in levels if c in direct
        }
        added_p99 = {
            c: (levels[c]["p99_us"] - direct[c]["p99_us"]) / 1000 for c in levels if c in direct
        }
        clean = [level for level in levels.values() if _clean(level)]
        within = [
            level["rps"]
            for level in clean
            if added_p99.get(level["connections"], float("inf")) < ADDED_P99_CEILING_MS
        ]
        figures: dict[str, Any] = {
            "name": name,
            "label": system.get("label", name),
            "added_p50_ms": added_p50,
            "added_p99_ms": added_p99,
            "peak_rps": max((level["rps"] for level in clean), default=0.0),
            "rps_within_ceiling": max(within) if within else None,
            "cpu_ms_per_request": {
                c: level["cpu_s"] * 1000 / level["requests"]
                for c, level in levels.items()
                if level["requests"]
            },
        }
        stream = system.get("stream")
        if stream is not None and direct_stream is not None:
            timed = stream["timed"]
            figures["ttft_added_ms"] = timed["ttft_p50_ms"] - direct_stream["ttft_p50_ms"]
            figures["gap_added_ms"] = timed["gap_p50_ms"] - direct_stream["gap_p50_ms"]
            held = stream["held"]
            figures["held_completed"] = held["completed"]
            # No sample means the process was gone before the streams opened.
            if held["peak_rss_per_worker"]:
                figures["rss_per_worker_mib"] = held["peak_rss_per_worker"] / 2**20
            if held["frames"]:
                figures["cpu_ms_per_chunk"] = held["cpu_s"] * 1000 / held["frames"]
        state = system.get("state")
        if state is not None and state["requests"]:
            requests = state["requests"]
            figures["argon2_share"] = state["argon2_verifications"] / requests
            trips = state.get("round_trips", {})
            if trips.get("requests"):
                # The hot path's scripts (admit, settle); the journal's batched HDEL
                # after each audit flush is off the request path, like the DB batch.
                commands, counted = trips["commands"], trips["requests"]
                hot = _hot_calls(commands)
                figures["redis_calls_per_request"] = hot / counted
                figures["redis_batched_per_request"] = (sum(commands.values()) - hot) / counted
            if "db_transactions" in state:
                figures["db_transactions_per_request"] = state["db_transactions"] / requests
        out.append(Figures(**figures))
    return out


@dataclass(frozen=True)
class Target:
    """One target of issue 6, with the measured value and whether it holds."""

    name: str
    goal: str
    measured: str
    met: bool


def _find(figures: list[Figures], name: str) -> Figures | None:
    return next((f for f in figures if f.name == name), None)


def targets(figures: list[Figures], system: str = "neuronetz-production") -> list[Target]:
    """The targets, checked for one system (production, native surface, by default)."""
    ours = _find(figures, system)
    if ours is None:
        return []
    floor = _find(figures, "floor")
    peer = _find(figures, "litellm")
    found: list[Target] = []
    p50, p99 = ours.added_p50_ms.get(1), ours.added_p99_ms.get(1)
    if p50 is not None and p99 is not None:
        found.append(Target("added latency, c=1, p50", "≤ 1 ms", f"{p50:.3f} ms", p50 <= 1))
        found.append(Target("added latency, c=1, p99", "≤ 3 ms", f"{p99:.3f} ms", p99 <= 3))
    if peer is not None and peer.peak_rps:
        ratio = ours.peak_rps / peer.peak_rps
        found.append(Target("throughput vs LiteLLM", "≥ 20x", f"{ratio:.1f}x", ratio >= 20))
    if floor is not None and floor.peak_rps:
        share = ours.peak_rps / floor.peak_rps
        found.append(Target("throughput vs floor rig", "≥ 35%", f"{share:.0%}", share >= 0.35))
    cpu = ours.cpu_ms_per_request.get(16)
    if cpu is not None:
        found.append(
            Target("gateway CPU per request (c=16)", "≤ 0.6 ms", f"{cpu:.3f} ms", cpu <= 0.6)
        )
    if ours.rss_per_worker_mib is not None:
        found.append(
            Target(
                "RSS per worker, 1,000 streams",
                "≤ 150 MB",
                f"{ours.rss_per_worker_mib * 1.048576:.0f} MB",
                ours.rss_per_worker_mib * 1.048576 <= 150,
            )
        )
    if ours.redis_calls_per_request is not None:
        calls = ours.redis_calls_per_request
        # Requests are the gateway's own count (earlier runs used wrk's, which leaves
        # out the 16 in flight when it stops: ~0.5-1.5% too few).
        found.append(
            Target("Redis calls per hot request", "2", f"{calls:.3f}", abs(calls - 2) < 0.02)
        )
    if ours.db_transactions_per_request is not None:
        db = ours.db_transactions_per_request
        found.append(
            Target(
                "DB round trips per hot request",
                "0 (audit batched off-path)",
                f"{db:.4f} batched",
                db < 0.05,
            )
        )
    return found


def _ms(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(figures: list[Figures]) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = []
    for c in CONCURRENCIES:
        rows.append((f"added p50, c={c} (ms)", [_ms(f.added_p50_ms.get(c)) for f in figures]))
        rows.append((f"added p99, c={c} (ms)", [_ms(f.added_p99_ms.get(c)) for f in figures]))
    rows += [
        ("peak throughput (req/s)", [f"{f.peak_rps:,.0f}" for f in figures]),
        (
            f"throughput with p99 added < {ADDED_P99_CEILING_MS:.0f} ms (req/s)",
            [
                _ms(f.rps_within_ceiling, 0)
                if f.rps_within_ceiling is None
                else f"{f.rps_within_ceiling:,.0f}"
                for f in figures
            ],
        ),
        ("CPU per request, c=1 (ms)", [_ms(f.cpu_ms_per_request.get(1), 3) for f in figures]),
        ("CPU per request, c=16 (ms)", [_ms(f.cpu_ms_per_request.get(16), 3) for f in figures]),
        ("added time to first token, p50 (ms)", [_ms(f.ttft_added_ms) for f in figures]),
        ("added gap between chunks, p50 (ms)", [_ms(f.gap_added_ms) for f in figures]),
        (
            "1,000 streams: completed",
            [
                _ms(f.held_completed, 0) if f.held_completed is None else str(f.held_completed)
                for f in figures
            ],
        ),
        ("1,000 streams: RSS per worker (MiB)", [_ms(f.rss_per_worker_mib, 0) for f in figures]),
        ("CPU per streamed chunk (ms)", [_ms(f.cpu_ms_per_chunk, 3) for f in figures]),
        (
            "Redis calls per request (hot path)",
            [_ms(f.redis_calls_per_request, 3) for f in figures],
        ),
        (
            "Redis calls per request (batched, off-path)",
            [_ms(f.redis_batched_per_request, 4) for f in figures],
        ),
        ("DB transactions per request", [_ms(f.db_transactions_per_request, 4) for f in figures]),
        ("requests that needed argon2", [_ms(f.argon2_share, 6) for f in figures]),
    ]
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The results section of ``docs/benchmarks.md``."""
    figures = derive(results)
    machine = results["machine"]
    plan = results["plan"]
    lines = [
        f"Run of **{results['date']}** ({results['seconds']} s), produced by",
        "",
        "```bash",
        results["command"],
        "```",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB,"
        f" Linux {machine['kernel']}, Python {machine['python']}, Granian {machine['granian']},"
        f" aiohttp {machine['aiohttp']}, {machine['nginx']}, {machine['wrk']}."
        " Load generator, backend, stores and system share the machine.",
        "",
        f"Each level: wrk, one thread, {plan['duration_s']:g} s, non-streamed chat, after a"
        f" {plan['warmup_s']:g} s warm-up. Streams: the mock Ollama at"
        f" {plan['token_rate']:g} tokens/s, {plan['timed_streams']} streams of"
        f" {plan['stream_tokens']} tokens one at a time; then {plan['held_streams']:,} at once at"
        f" {plan['held_token_rate']:g} tokens/s.",
        "",
        "| figure | " + " | ".join(f.label for f in figures) + " |",
        "|---|" + "---:|" * len(figures),
    ]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in _rows(figures)]
    found = targets(figures)
    if found:
        lines += [
            "",
            "Targets (neuronetz production, native surface):",
            "",
            "| target | goal | measured | met |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {t.name} | {t.goal} | {t.measured} | {'yes' if t.met else '**no**'} |"
            for t in found
        ]
    return "\n".join(lines) + "\n"


def splice(document: str, section: str) -> str:
    """Replace what lies between the results markers of ``document`` with ``section``."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(document):
        raise ValueError(f"the document has no {START} … {END} section")
    return pattern.sub(lambda _: f"{START}\n{section}{END}", document)


def plot(results: dict[str, Any], path: Path) -> None:
    """Added p50 and p99 against concurrency, one line per system (log scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [f for f in derive(results) if f.name != "direct"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for axis, attribute, title in (
        (axes[0], "added_p50_ms", "added latency, p50"),
        (axes[1], "added_p99_ms", "added latency, p99"),
    ):
        for f in figures:
            series = sorted(getattr(f, attribute).items())
            # Log axes cannot show 0 or less; a system as fast as direct sits at the floor.
            axis.plot(
                [c for c, _ in series],
                [max(v, 0.01) for _, v in series],
                marker="o",
                label=f.label,
            )
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("concurrent clients")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms over direct")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Non-streamed chat, {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
