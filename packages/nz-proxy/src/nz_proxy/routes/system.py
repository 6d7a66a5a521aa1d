"""Probes and documents: liveness, readiness, metrics, the playground and the OpenAPI
document. Not API traffic, so never audited."""

from __future__ import annotations

import functools
import ipaddress

import msgspec
from litestar.handlers import asgi

from nz_proxy.errors import MethodNotAllowed, RouteNotFound, Surface
from nz_proxy.exchange import exchange_of
from nz_proxy.health import readiness
from nz_proxy.metrics import CONTENT_TYPE
from nz_proxy.metrics import render as render_metrics
from nz_proxy.openapi import openapi_document
from nz_proxy.playground import HEADERS as PLAYGROUND_HEADERS
from nz_proxy.playground import page
from nz_proxy.routes import gateway_of
from nz_proxy.translation.responses import send_bytes, send_error
from nz_proxy.types import AsgiScope, Receive, Send

__all__ = ["ROUTES"]


async def _probe(scope: AsgiScope, send: Send) -> bool:
    """Probes are not API traffic: never audited, and only read."""
    exchange = exchange_of(scope)
    exchange.audited = False
    if scope["method"] in ("GET", "HEAD"):
        return True
    await send_error(send, MethodNotAllowed(("GET", "HEAD")), exchange.surface)
    return False


@asgi("/healthz", is_mount=False, copy_scope=False)
async def healthz(scope: AsgiScope, receive: Receive, send: Send) -> None:
    if await _probe(scope, send):
        await send_bytes(send, 200, b'{"status":"ok"}', head=scope["method"] == "HEAD")


@asgi("/readyz", is_mount=False, copy_scope=False)
async def readyz(scope: AsgiScope, receive: Receive, send: Send) -> None:
    if not await _probe(scope, send):
        return
    ready, checks = await readiness(gateway_of(scope))
    body = msgspec.json.encode({"status": "ready" if ready else "unavailable", "checks": checks})
    await send_bytes(send, 200 if ready else 503, body)


_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_FORWARDING = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip", b"x-forwarded-host"})


@asgi("/metrics", is_mount=False, copy_scope=False)
async def metrics(scope: AsgiScope, receive: Receive, send: Send) -> None:
    """Prometheus text, for loopback clients only: the peer itself, never a forwarded
    address, must be local (SPEC §3)."""
    if not await _probe(scope, send):
        return
    client = scope.get("client")
    try:
        local = client is not None and any(
            ipaddress.ip_address(client[0]) in network for network in _LOOPBACK
        )
    except ValueError:
        local = False
    # A local reverse proxy is a loopback peer too: anything it forwarded came from
    # outside, whatever TRUSTED_PROXIES says.
    forwarded = any(name in _FORWARDING for name, _ in scope["headers"])
    if not local or forwarded:
        await send_error(send, RouteNotFound(), Surface.PLAIN)
        return
    await send_bytes(send, 200, render_metrics(), CONTENT_TYPE)


@asgi("/playground", is_mount=True, copy_scope=True)
async def playground(scope: AsgiScope, receive: Receive, send: Send) -> None:
    """The playground page, only when ``PLAYGROUND_ENABLED=true`` (else 404)."""
    if not await _probe(scope, send):
        return
    path = exchange_of(scope).path
    if not gateway_of(scope).settings.playground_enabled or path not in (
        "/playground",
        "/playground/",
        "/playground/index.html",
    ):
        await send_error(send, RouteNotFound(), Surface.PLAIN)
        return
    await send_bytes(
        send,
        200,
        page(),
        b"text/html; charset=utf-8",
        PLAYGROUND_HEADERS,
        head=scope["method"] == "HEAD",
    )


@functools.cache
def _openapi_bytes() -> bytes:
    # Built on first use (a throwaway Litestar app), then the same bytes every time.
    return msgspec.json.encode(openapi_document())


@asgi("/openapi.json", is_mount=False, copy_scope=False)
async def openapi(scope: AsgiScope, receive: Receive, send: Send) -> None:
    """The OpenAPI document. No key: it describes the API, not any tenant's data."""
    if await _probe(scope, send):
        await send_bytes(send, 200, _openapi_bytes(), head=scope["method"] == "HEAD")


ROUTES = [healthz, readyz, metrics, playground, openapi]
