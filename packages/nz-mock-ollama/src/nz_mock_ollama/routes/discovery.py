"""Read-only endpoints: `/`, `/api/version`, `/api/tags`, `/api/ps`, `/api/show`."""

from __future__ import annotations

from aiohttp import web

from nz_mock_ollama.bodies import BOOL, STRING, read_body
from nz_mock_ollama.catalogue import with_default_tag
from nz_mock_ollama.errors import OllamaError, json_response
from nz_mock_ollama.state import STATE

__all__ = ["root", "show", "tags", "version"]


async def root(request: web.Request) -> web.Response:
    """`GET|HEAD /`: the liveness text."""
    return web.Response(text="Ollama is running", content_type="text/plain")


async def version(request: web.Request) -> web.Response:
    """`GET|HEAD /api/version`."""
    return json_response({"version": request.app[STATE].config.version})


async def tags(request: web.Request) -> web.Response:
    """`GET|HEAD /api/tags`: installed models, newest first."""
    return json_response(request.app[STATE].catalogue.tags_body())


async def ps(request: web.Request) -> web.Response:
    """`GET /api/ps`: models loaded (or loading) and not yet expired."""
    state = request.app[STATE]
    return json_response(state.scheduler.ps(state.offset_minutes))


async def show(request: web.Request) -> web.Response:
    """`POST /api/show`: details, `model_info` (always), capabilities, template, …"""
    state = request.app[STATE]
    body = await read_body(
        request, "ShowRequest", {"model": STRING, "name": STRING, "verbose": BOOL}
    )
    name = body.get("model") or body.get("name") or ""
    if not name:
        raise OllamaError(400, "model is required")
    entry = state.catalogue.get(name)
    if entry is None:
        raise OllamaError(404, f"model '{with_default_tag(name)}' not found")
    return json_response(entry.show(state.offset_minutes))
