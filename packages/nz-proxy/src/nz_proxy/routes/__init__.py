"""Thin route handlers: each hands its request to one function of the request path.

The API routes are raw ASGI handlers (``@asgi``): the gateway writes its own status,
headers and streamed body, watches for the client leaving, and pays nothing for
request parsing it does not use. The gateway's services come from the app's state.
"""

from __future__ import annotations

from nz_proxy.gateway import Gateway
from nz_proxy.types import AsgiScope

__all__ = ["gateway_of"]


def gateway_of(scope: AsgiScope) -> Gateway:
    gateway: Gateway = scope["litestar_app"].state.gateway
    return gateway
