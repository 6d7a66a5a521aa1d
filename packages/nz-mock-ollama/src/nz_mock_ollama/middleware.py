"""The one middleware: count, inject per-request faults, and map errors to Ollama's shapes.

`/_mock/*` (the control API) skips counting and faults. Every other request is counted by
path before anything else, unknown paths and admin paths included, so a test can prove the
gateway never forwarded something.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from nz_mock_ollama.errors import OllamaError, error_response, plain_response
from nz_mock_ollama.ndjson import ARRIVED, client_gone, record_disconnect
from nz_mock_ollama.state import STATE

__all__ = ["CONTROL_PREFIX", "ollama_middleware"]

CONTROL_PREFIX = "/_mock/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OllamaError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPMethodNotAllowed:
        return plain_response(405, "405 method not allowed")
    except web.HTTPNotFound:
        return plain_response(404, "404 page not found")


@web.middleware
async def ollama_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request, apply `delay_first_byte_s` and `fail_next`, then handle it."""
    path = request.path
    if path.startswith(CONTROL_PREFIX):
        return await _answer(request, handler)
    request[ARRIVED] = time.monotonic()
    state = request.app[STATE]
    state.stats.count(path)
    try:
        await state.received.record(request)
        delay = state.faults.delay_first_byte_s
        if delay and state.faults.applies_to(path):
            await asyncio.sleep(delay)
        failure = state.take_failure(path)
        if failure is not None:
            status, message, plain = failure
            return plain_response(status, message) if plain else error_response(status, message)
        return await _answer(request, handler)
    except asyncio.CancelledError:
        # With handler cancellation on, a client that leaves cancels us right here.
        if client_gone(request):
            record_disconnect(request, state, 0, "cancelled")
        raise
