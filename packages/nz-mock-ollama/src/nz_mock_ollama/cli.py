"""Command-line flags of `nz-mock-ollama`, turned into one `MockConfig` per node.

`--port` may be repeated: each port is a node of its own (its own models, loaded models,
counters and faults) served by the one process. `--models`, `--parallel` and
`--max-loaded-models` are then given once for every node, or once per `--port` in the
same order. `OLLAMA_NUM_PARALLEL` and `OLLAMA_MAX_LOADED_MODELS` set the defaults of the
last two, as they do for Ollama.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from nz_mock_ollama.config import DEFAULT_MODELS, MockConfig
from nz_mock_ollama.faults import FaultSpec, update_faults
from nz_mock_ollama.node import NodeSettings, parse_load_delay

__all__ = ["Invocation", "parse_args"]

_T = TypeVar("_T")
_DEFAULT_PORT = 11434


@dataclass(frozen=True, slots=True)
class Invocation:
    """Where to listen and what to serve: `(port, config)` per node."""

    host: str
    nodes: tuple[tuple[int, MockConfig], ...]

    @property
    def port(self) -> int:
        """The first node's port."""
        return self.nodes[0][0]

    @property
    def config(self) -> MockConfig:
        """The first node's config."""
        return self.nodes[0][1]


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nz-mock-ollama",
        description="A faithful fake of the Ollama HTTP API, for demos, tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        action="append",
        help=f"port, 0 for a free one (default {_DEFAULT_PORT}); repeat it to serve several "
        "nodes from one process",
    )
    parser.add_argument(
        "--models",
        type=_names,
        action="append",
        help="comma-separated model names; no tag means :latest; names with minilm, embed "
        f"or bge are embedding models; once, or once per --port (default: {DEFAULT_MODELS})",
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
    node = parser.add_argument_group("the node (also settable at runtime: POST /_mock/node)")
    node.add_argument(
        "--parallel",
        type=int,
        action="append",
        help="requests generating at once per loaded model, the others queue "
        "(OLLAMA_NUM_PARALLEL; default: its value, else 0 = unlimited); once, or once per --port",
    )
    node.add_argument(
        "--max-loaded-models",
        type=int,
        action="append",
        help="models loaded at once, beyond which one is evicted (OLLAMA_MAX_LOADED_MODELS; "
        "default: its value, else 0 = unlimited); once, or once per --port",
    )
    node.add_argument(
        "--load-delay",
        action="append",
        default=[],
        metavar="[MODEL=]SECONDS",
        help="how long loading a model takes (every model without MODEL=); repeatable",
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


def _per_node(flag: str, given: list[_T] | None, default: _T, nodes: int) -> list[_T]:
    values = given or [default]
    if len(values) == 1:
        return values * nodes
    if len(values) != nodes:
        raise ValueError(
            f"{flag} is given {len(values)} times for {nodes} ports: give it once for every "
            "node, or once per --port"
        )
    return values


def _env_count(environ: Mapping[str, str], name: str) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"{name} must be an integer >= 0, not {text!r}")
    return int(text)


def _node_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> list[NodeSettings]:
    nodes = len(args.port or [_DEFAULT_PORT])
    parallel = _per_node(
        "--parallel", args.parallel, _env_count(environ, "OLLAMA_NUM_PARALLEL"), nodes
    )
    max_loaded = _per_node(
        "--max-loaded-models",
        args.max_loaded_models,
        _env_count(environ, "OLLAMA_MAX_LOADED_MODELS"),
        nodes,
    )
    every_model, per_model = 0.0, {}
    for text in args.load_delay:
        name, seconds = parse_load_delay(text)
        if name is None:
            every_model = seconds
        else:
            per_model[name] = seconds
    return [
        NodeSettings(p, m, load_delay_s=every_model, load_delays=per_model)
        for p, m in zip(parallel, max_loaded, strict=True)
    ]


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Invocation:
    """Parse the command line, `environ` (default: the process's) giving the defaults of
    `--parallel` and `--max-loaded-models` (exits with a usage message on bad flags)."""
    parser = _parser()
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
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
        ports = args.port or [_DEFAULT_PORT]
        catalogues = _per_node("--models", args.models, DEFAULT_MODELS, len(ports))
        configs = [
            MockConfig(
                models=models or DEFAULT_MODELS,
                version=args.ollama_version,
                token_rate=args.token_rate,
                response_tokens=args.response_tokens,
                utc_offset_minutes=args.utc_offset_minutes,
                faults=faults,
                refuse_connections_s=args.refuse_connections,
                node=node,
            )
            for models, node in zip(catalogues, _node_settings(args, environ), strict=True)
        ]
    except ValueError as exc:
        parser.error(str(exc))
    return Invocation(host=args.host, nodes=tuple(zip(ports, configs, strict=True)))
