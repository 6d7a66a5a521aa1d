"""``uv run --all-groups python -m tests.benchmarks``: run the whole benchmark and publish it.

Writes ``docs/assets/benchmarks/results.json`` (the raw run) and ``latency.png``, and
replaces the results section of ``docs/benchmarks.md``. ``--quick`` is a short run for
trying the harness; ``--no-peer`` skips LiteLLM (and its install).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from tests.benchmarks import report
from tests.benchmarks.run import Plan, load, run

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = REPO / "docs" / "benchmarks.md"
ASSETS = REPO / "docs" / "assets" / "benchmarks"
QUICK = Plan(
    levels=(1, 16, 256),
    duration_s=2,
    warmup_s=1,
    timed_streams=10,
    held_streams=200,
    held_tokens=10,
)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def publish(results: dict[str, object], assets: Path, document: Path | None) -> None:
    """Write the JSON and the plot; splice the table into the document."""
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report.plot(results, assets / "latency.png")
    if document is not None:
        document.write_text(report.splice(document.read_text(), report.markdown(results)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run, to try the harness")
    parser.add_argument("--no-peer", action="store_true", help="skip LiteLLM")
    parser.add_argument("--out", type=Path, help="write here instead of docs/ (no splice)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only render an earlier run's JSON"
    )
    args = parser.parse_args(argv)
    command = "uv run --all-groups python -m tests.benchmarks " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    if args.render:
        results = load(args.render)
    else:
        plan = QUICK if args.quick else Plan()
        if args.no_peer:
            plan = replace(plan, peer=False)
        results = run(plan, command.strip(), _log, keep=args.keep)
    if args.out:
        publish(results, args.out, None)
        (args.out / "results.md").write_text(report.markdown(results))
    else:
        publish(results, ASSETS, DOCUMENT)
    print(report.markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
