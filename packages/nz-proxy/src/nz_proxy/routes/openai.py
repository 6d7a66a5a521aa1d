"""The OpenAI-compatible surface, ``/v1`` (SPEC §5)."""

from __future__ import annotations

from litestar.handlers import asgi

from nz_proxy.errors import RouteNotFound, Surface
from nz_proxy.exchange import exchange_of
from nz_proxy.inference import ENDPOINTS, serve_inference
from nz_proxy.listing import LISTINGS, serve_listing
from nz_proxy.routes import gateway_of
from nz_proxy.translation.responses import send_error
from nz_proxy.types import AsgiScope, Receive, Send

__all__ = ["ROUTES"]


@asgi("/v1/chat/completions", is_mount=False, copy_scope=False)
async def chat_completions(scope: AsgiScope, receive: Receive, send: Send) -> None:
    endpoint = ENDPOINTS["/v1/chat/completions"]
    await serve_inference(gateway_of(scope), endpoint, scope, receive, send)


@asgi("/v1/completions", is_mount=False, copy_scope=False)
async def completions(scope: AsgiScope, receive: Receive, send: Send) -> None:
    await serve_inference(gateway_of(scope), ENDPOINTS["/v1/completions"], scope, receive, send)


@asgi("/v1/embeddings", is_mount=False, copy_scope=False)
async def embeddings(scope: AsgiScope, receive: Receive, send: Send) -> None:
    await serve_inference(gateway_of(scope), ENDPOINTS["/v1/embeddings"], scope, receive, send)


# A mount, because the model id may contain `/` (newer SDKs send it as `%2F`, which the
# server decodes) and Litestar cannot route a path parameter to an ASGI handler.
@asgi("/v1/models", is_mount=True, copy_scope=True)
async def models(scope: AsgiScope, receive: Receive, send: Send) -> None:
    path = exchange_of(scope).path  # as received, before the mount rewrote it
    if path in ("/v1/models", "/v1/models/"):
        template = "/v1/models"
    elif path.startswith("/v1/models/"):
        template = "/v1/models/{model}"
    else:  # `/v1/modelsx`: the mount matches prefixes, not path segments
        await send_error(send, RouteNotFound(), Surface.OPENAI)
        return
    methods, handler = LISTINGS[template]
    await serve_listing(gateway_of(scope), template, methods, handler, scope, receive, send)


ROUTES = [chat_completions, completions, embeddings, models]
