"""Command-line flags of `nz-mock-ollama`, turned into a `MockConfig`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from nz_mock_ollama.config import DEFAULT_MODELS, MockConfig
from nz_mock_ollama.faults import FaultSpec, update_faults

__all__ = ["Invocation", "parse_args"]


@dataclass(frozen=True, slots=True)
class Invocation:
    """Where to listen and what to serve."""

    host: str
    port: int
    config: MockConfig


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nz-mock-ollama",
        description="A faithful fake of the Ollama HTTP API, for demos, tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=11434, help="port, 0 for a free one (default %(default)s)"
    )
    parser.add_argument(
        "--models",
        type=_names,
        default=DEFAULT_MODELS,
        help="comma-separated model names; no tag means :latest; names with minilm, embed "
        "or bge are embedding models (default: %(default)s)",
    )
    parser.add_argument("--ollama-version", default="0.33.0", help="what /api/version reports")
    parser.add_argument(
        "--token-rate",
        type=float,
        default=20.0,
        help="streamed tokens per second, 0 for no delay (default %(default)s)",
    )
    parser.add_argument(
        "--response-tokens", type=int, default=24, help="answer length in tokens (default 24)"
    )
    parser.add_argument(
        "--utc-offset-minutes",
        type=int,
        default=-420,
        help="zone of modified_at/expires_at, minutes east of UTC (default -420, i.e. -07:00)",
    )
    faults = parser.add_argument_group("faults (also settable at runtime: POST /_mock/faults)")
    faults.add_argument("--fail-next", type=int, default=0, help="fail the next N requests")
    faults.add_argument("--fail-status", type=int, default=500, help="status for --fail-next")
    faults.add_argument("--fail-message", default=None, help="error text for --fail-next")
    faults.add_argument(
        "--fault-paths",
        type=_names,
        default=(),
        help="comma-separated paths the faults apply to (default: every Ollama path)",
    )
    faults.add_argument(
        "--delay-first-byte", type=float, default=0.0, help="seconds before answering"
    )
    faults.add_argument(
        "--cut-stream-after", type=int, default=None, help="drop the connection after N frames"
    )
    faults.add_argument(
        "--error-after", type=int, default=None, help='end streams with {"error"} after N frames'
    )
    faults.add_argument("--error-message", default=None, help="text of the --error-after line")
    faults.add_argument(
        "--refuse-connections",
        type=float,
        default=0.0,
        help="right after starting, refuse connections for this many seconds",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Invocation:
    """Parse the command line (exits with a usage message on bad flags)."""
    parser = _parser()
    args = parser.parse_args(argv)
    changes: dict[str, object] = {
        "fail_next": args.fail_next,
        "fail_status": args.fail_status,
        "delay_first_byte_s": args.delay_first_byte,
        "cut_stream_after": args.cut_stream_after,
        "error_after": args.error_after,
        "paths": list(args.fault_paths),
    }
    if args.fail_message is not None:
        changes["fail_message"] = args.fail_message
    if args.error_message is not None:
        changes["error_message"] = args.error_message
    try:
        faults = update_faults(FaultSpec(), changes)
        config = MockConfig(
            models=args.models or DEFAULT_MODELS,
            version=args.ollama_version,
            token_rate=args.token_rate,
            response_tokens=args.response_tokens,
            utc_offset_minutes=args.utc_offset_minutes,
            faults=faults,
            refuse_connections_s=args.refuse_connections,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return Invocation(host=args.host, port=args.port, config=config)
