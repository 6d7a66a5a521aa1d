"""The outermost ASGI layer: every HTTP request gets an :class:`Exchange`, an
``X-Request-ID`` on its response, and exactly one record when it ends (the log line,
and the observers the composition root adds: audit row, metrics).

It sits outside Litestar so that requests the router refuses (404, 405) and failures
nothing else caught are recorded too; a failure never reaches the client as a trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from nz_proxy.errors import GatewayError, render
from nz_proxy.exchange import SCOPE_KEY, Exchange, Network, redact_path
from nz_proxy.logs import request_fields
from nz_proxy.types import ASGIApp, AsgiScope, Message, Receive, Send

__all__ = ["Recorder"]

log = structlog.get_logger("nz_proxy.request")


class Recorder:
    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted: Sequence[Network] = (),
        observers: Sequence[Callable[[Exchange], None]] = (),
    ) -> None:
        self.app = app
        self.trusted = trusted
        self.observers = list(observers)

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange.begin(scope, self.trusted)
        scope[SCOPE_KEY] = exchange
        # Every line logged while serving it (a backend error deep in a stream, say)
        # carries the request id, so it can be matched with the request's own line.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=exchange.request_id)
        request_id = (b"x-request-id", exchange.request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not exchange.status:
                    exchange.status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled_error", path=redact_path(exchange.path))
            exchange.error = exchange.error or "internal_error"
            if not started:
                failure = GatewayError("Internal error.")
                exchange.status = failure.status
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": failure.status,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send_with_id(
                    {"type": "http.response.body", "body": render(failure, exchange.surface)}
                )
        finally:
            if not exchange.status:
                exchange.status = 499  # the client left before any answer
            self._finish(exchange)
            structlog.contextvars.clear_contextvars()

    def _finish(self, exchange: Exchange) -> None:
        if exchange.audited:
            log.info("request", **request_fields(exchange))
        for observe in self.observers:
            observe(exchange)
