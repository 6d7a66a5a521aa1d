"""`nz-mock-ollama` / `python -m nz_mock_ollama`: serve until SIGINT or SIGTERM.

Prints exactly one line to stderr per node once listening,
`nz-mock-ollama listening on <url> (…)`, in the order of the `--port` flags, with the real
port when started with `--port 0`.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import sys
from collections.abc import Sequence

from nz_mock_ollama.cli import Invocation, parse_args
from nz_mock_ollama.server import MockServer

__all__ = ["main"]


def _raise_open_file_limit() -> None:
    # Benchmarks hold ~1,000 streams open; a 1024 soft limit would make accept() fail.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class _CannotListen(Exception):
    """A node's port could not be bound: `host:port: reason`."""


async def _run(invocation: Invocation) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with contextlib.AsyncExitStack() as nodes:
            for port, config in invocation.nodes:
                try:
                    server = await nodes.enter_async_context(
                        MockServer(config, invocation.host, port)
                    )
                except OSError as exc:
                    raise _CannotListen(f"{invocation.host}:{port}: {exc}") from None
                rate = f"{config.token_rate:g} tokens/s" if config.token_rate else "unpaced"
                print(
                    f"nz-mock-ollama listening on {server.url} "
                    f"({len(config.models)} models, {rate})",
                    file=sys.stderr,
                    flush=True,
                )
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    invocation = parse_args(argv)
    _raise_open_file_limit()
    try:
        asyncio.run(_run(invocation))
    except _CannotListen as exc:
        raise SystemExit(f"nz-mock-ollama: cannot listen on {exc}") from None


if __name__ == "__main__":
    main()
