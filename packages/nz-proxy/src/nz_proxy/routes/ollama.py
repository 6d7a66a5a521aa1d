"""Ollama's native surface, ``/api`` (SPEC §5). Anything not listed here is refused
with 403 and never forwarded: pulls, pushes, deletes and every path we do not know."""

from __future__ import annotations

from litestar.handlers import asgi

from nz_proxy.errors import EndpointBlocked, MethodNotAllowed
from nz_proxy.exchange import exchange_of
from nz_proxy.inference import ENDPOINTS, serve_inference
from nz_proxy.listing import LISTINGS, serve_listing
from nz_proxy.routes import gateway_of
from nz_proxy.translation.responses import MEDIA_TEXT, send_bytes, send_error
from nz_proxy.types import AsgiScope, Receive, Send

__all__ = ["ROUTES"]


@asgi("/api/chat", is_mount=False, copy_scope=False)
async def chat(scope: AsgiScope, receive: Receive, send: Send) -> None:
    await serve_inference(gateway_of(scope), ENDPOINTS["/api/chat"], scope, receive, send)


@asgi("/api/generate", is_mount=False, copy_scope=False)
async def generate(scope: AsgiScope, receive: Receive, send: Send) -> None:
    await serve_inference(gateway_of(scope), ENDPOINTS["/api/generate"], scope, receive, send)


@asgi("/api/embed", is_mount=False, copy_scope=False)
async def embed(scope: AsgiScope, receive: Receive, send: Send) -> None:
    await serve_inference(gateway_of(scope), ENDPOINTS["/api/embed"], scope, receive, send)


@asgi("/api/embeddings", is_mount=False, copy_scope=False)
async def embeddings(scope: AsgiScope, receive: Receive, send: Send) -> None:
    await serve_inference(gateway_of(scope), ENDPOINTS["/api/embeddings"], scope, receive, send)


async def _listing(path: str, scope: AsgiScope, receive: Receive, send: Send) -> None:
    methods, handler = LISTINGS[path]
    await serve_listing(gateway_of(scope), path, methods, handler, scope, receive, send)


@asgi("/api/tags", is_mount=False, copy_scope=False)
async def tags(scope: AsgiScope, receive: Receive, send: Send) -> None:
    await _listing("/api/tags", scope, receive, send)


@asgi("/api/ps", is_mount=False, copy_scope=False)
async def running(scope: AsgiScope, receive: Receive, send: Send) -> None:
    await _listing("/api/ps", scope, receive, send)


@asgi("/api/show", is_mount=False, copy_scope=False)
async def show(scope: AsgiScope, receive: Receive, send: Send) -> None:
    await _listing("/api/show", scope, receive, send)


@asgi("/api/version", is_mount=False, copy_scope=False)
async def version(scope: AsgiScope, receive: Receive, send: Send) -> None:
    await _listing("/api/version", scope, receive, send)


@asgi("/api", is_mount=True, copy_scope=True)
async def blocked(scope: AsgiScope, receive: Receive, send: Send) -> None:
    """/api/pull, /api/push, /api/create, /api/copy, /api/delete, /api/blobs/* and any
    other path under /api: administration of the backend never goes through the
    gateway. (A mount, so it catches whatever the routes above do not.)"""
    exchange = exchange_of(scope)
    exchange.endpoint = _admin_template(exchange.path)
    error = EndpointBlocked()
    exchange.failed(error)
    await send_error(send, error, exchange.surface)


_ADMIN = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")


def _admin_template(path: str) -> str:
    """The endpoint to record: a template, never the client's own path (it becomes a
    metrics label, and a client may put anything in it, a key included)."""
    if path in _ADMIN:
        return path
    return "/api/blobs/*" if path.startswith("/api/blobs/") else "/api/*"


@asgi("/", is_mount=False, copy_scope=False)
async def root(scope: AsgiScope, receive: Receive, send: Send) -> None:
    """What Ollama answers at its root, for tools that probe it; no key needed."""
    exchange = exchange_of(scope)
    exchange.audited = False
    if scope["method"] not in ("GET", "HEAD"):
        await send_error(send, MethodNotAllowed(("GET", "HEAD")), exchange.surface)
        return
    body = b"Ollama is running"
    await send_bytes(send, 200, body, MEDIA_TEXT, head=scope["method"] == "HEAD")


ROUTES = [chat, generate, embed, embeddings, tags, running, show, version, blocked, root]
