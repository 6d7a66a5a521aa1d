"""`nz-mock-ollama` / `python -m nz_mock_ollama`: serve until SIGINT or SIGTERM.

Prints exactly one line to stderr once listening, `nz-mock-ollama listening on <url> (…)`,
with the real port when started with `--port 0`.
"""

from __future__ import annotations

import asyncio
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


async def _run(invocation: Invocation) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    config = invocation.config
    try:
        server = MockServer(config, invocation.host, invocation.port)
        async with server:
            rate = f"{config.token_rate:g} tokens/s" if config.token_rate else "unpaced"
            print(
                f"nz-mock-ollama listening on {server.url} ({len(config.models)} models, {rate})",
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
    except OSError as exc:
        raise SystemExit(
            f"nz-mock-ollama: cannot listen on {invocation.host}:{invocation.port}: {exc}"
        ) from None


if __name__ == "__main__":
    main()
