"""The composition root: `create_app(config)` wires state, middleware and every route."""

from __future__ import annotations

from aiohttp import web

from nz_mock_ollama.config import MockConfig
from nz_mock_ollama.middleware import ollama_middleware
from nz_mock_ollama.routes import admin, control, discovery, embed, inference
from nz_mock_ollama.state import STATE, MockState

__all__ = ["create_app"]

# Ollama has no body limit worth the name; aiohttp's 1 MiB default would refuse long chats.
_MAX_BODY = 256 * 1024 * 1024


def create_app(
    config: MockConfig | None = None, *, state: MockState | None = None
) -> web.Application:
    """Build the mock's aiohttp application (serve it with `nz_mock_ollama.server`)."""
    app = web.Application(middlewares=[ollama_middleware], client_max_size=_MAX_BODY)
    app[STATE] = state if state is not None else MockState.from_config(config or MockConfig())
    route = app.router
    route.add_get("/", discovery.root)  # add_get also answers HEAD
    route.add_get("/api/version", discovery.version)
    route.add_get("/api/tags", discovery.tags)
    route.add_get("/api/ps", discovery.ps, allow_head=False)
    route.add_post("/api/show", discovery.show)
    route.add_post("/api/chat", inference.chat)
    route.add_post("/api/generate", inference.generate)
    route.add_post("/api/embed", embed.embed)
    route.add_post("/api/embeddings", embed.embeddings)
    route.add_post("/api/pull", admin.pull)
    route.add_post("/api/push", admin.push)
    route.add_post("/api/create", admin.create)
    route.add_post("/api/copy", admin.copy)
    route.add_delete("/api/delete", admin.delete)
    route.add_head("/api/blobs/{digest}", admin.blob_exists)
    route.add_post("/api/blobs/{digest}", admin.blob_upload)

    route.add_get("/_mock/stats", control.stats, allow_head=False)
    route.add_post("/_mock/reset", control.reset)
    route.add_get("/_mock/requests", control.requests, allow_head=False)
    route.add_get("/_mock/faults", control.faults, allow_head=False)
    route.add_post("/_mock/faults", control.faults)
    route.add_post("/_mock/models", control.models)
    route.add_get("/_mock/config", control.config, allow_head=False)
    route.add_post("/_mock/config", control.config)
    route.add_get("/_mock/node", control.node, allow_head=False)
    route.add_post("/_mock/node", control.node)
    return app
