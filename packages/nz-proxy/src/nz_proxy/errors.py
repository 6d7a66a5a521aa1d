"""The data plane's error tree, and its one mapping to HTTP.

Every refusal the gateway makes is one of these exceptions. Handlers and the request
path raise them; :func:`render` turns one into the body of the surface it happened on
(OpenAI's nested object on ``/v1``, Ollama's flat string on ``/api``). Nothing else
in the package writes an error body, so every surface stays consistent (SPEC §6).

``GatewayError``
    ``InvalidRequest`` (400), ``InvalidApiKey`` (401), ``PermissionDenied`` (403:
    ``ModelNotAllowed``, ``EndpointBlocked``, ``ScopeMissing``), ``RouteNotFound``
    (404), ``MethodNotAllowed`` (405), ``RequestTooLarge`` (413), ``LimitExceeded``
    (429), ``BudgetExhausted`` (429), ``UpstreamRejected`` (the backend's 4xx),
    ``UpstreamUnavailable`` (502), ``GatewayUnavailable`` (503), ``VerificationBusy``
    (503), ``UpstreamTimeout`` (504).
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

import msgspec

__all__ = [
    "BudgetExhausted",
    "EndpointBlocked",
    "GatewayError",
    "GatewayUnavailable",
    "InvalidApiKey",
    "InvalidRequest",
    "LimitExceeded",
    "MethodNotAllowed",
    "ModelNotAllowed",
    "PermissionDenied",
    "RequestTooLarge",
    "RouteNotFound",
    "ScopeMissing",
    "Surface",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "VerificationBusy",
    "render",
]


class Surface(Enum):
    """Which API family a request belongs to; it decides the error body's shape."""

    OPENAI = "openai"
    OLLAMA = "ollama"
    PLAIN = "plain"


class GatewayError(Exception):
    """Base of every refusal. Subclasses fix the status, type and code."""

    status: int = 500
    type: ClassVar[str] = "api_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Milliseconds until a retry can succeed; None when waiting does not help.
        self.retry_after_ms = retry_after_ms
        # Headers the refusal carries besides Retry-After (rate-limit state, SPEC §6.5).
        self.extra_headers: list[tuple[bytes, bytes]] = []

    def ollama_message(self) -> str:
        """The flat message of Ollama's error shape."""
        return self.message

    def headers(self) -> dict[str, str]:
        """``Retry-After`` (whole seconds, at least 1) and ``retry-after-ms`` when set."""
        if self.retry_after_ms is None:
            return {}
        seconds = max(1, -(-self.retry_after_ms // 1000))
        return {"Retry-After": str(seconds), "retry-after-ms": str(max(1, self.retry_after_ms))}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class BodyTimeout(GatewayError):
    """The body did not arrive within its deadline (a slow client holding a slot)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request body did not arrive within {seconds:g} s.")


class InvalidApiKey(GatewayError):
    """Missing, malformed, unknown, wrong or revoked key: one body for all of them."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self) -> None:
        super().__init__("Invalid API key.")

    def ollama_message(self) -> str:
        return "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="neuronetz-gateway"'}


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class ModelNotAllowed(PermissionDenied):
    """Outside the effective set, or nonexistent: deliberately indistinguishable."""

    code = "model_not_allowed"

    def __init__(self) -> None:
        super().__init__("The model does not exist or this key may not use it.")


class EndpointBlocked(PermissionDenied):
    code = "endpoint_blocked"

    def __init__(self) -> None:
        super().__init__("This endpoint is not available through the gateway.")


class ScopeMissing(PermissionDenied):
    code = "scope_missing"

    def __init__(self, scope: str) -> None:
        super().__init__(f"This key lacks the '{scope}' scope.")


class RouteNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"

    def __init__(self) -> None:
        super().__init__("Not found.")


class UpstreamRejected(GatewayError):
    """The backend refused the request as malformed (a 4xx other than 404); its
    message is passed on, since it is about the client's own request."""

    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, allowed: tuple[str, ...] = ()) -> None:
        super().__init__("Method not allowed.")
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)} if self.allowed else {}


class RequestTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body exceeds {limit} bytes.")


class LimitExceeded(GatewayError):
    """rpm, tpm or concurrency; ``code`` names which."""

    status = 429
    type = "rate_limit_exceeded"

    def __init__(self, code: str, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms)
        self.code = code


class BudgetExhausted(GatewayError):
    """The binding budget period cannot hold the request; a ``total`` never resets."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exhausted"

    def __init__(self, period: str, *, retry_after_ms: int | None) -> None:
        super().__init__(
            f"Token budget exhausted for period '{period}'.", retry_after_ms=retry_after_ms
        )
        self.period = period


class UpstreamUnavailable(GatewayError):
    """The backend could not be reached, or failed. ``detail`` is the backend's own
    message, already made safe to show (no addresses, no paths), when it gave one."""

    status = 502
    type = "api_error"
    code = "upstream_unavailable"

    def __init__(self, *, retry_after_ms: int | None = None, detail: str | None = None) -> None:
        message = "The model backend is unavailable."
        if detail:
            message = f"The model backend failed: {detail}"
        super().__init__(message, retry_after_ms=retry_after_ms)


class GatewayUnavailable(GatewayError):
    """Fail closed: a dependency the decision needs is down (SPEC §6.2)."""

    status = 503
    type = "api_error"
    code = "gateway_unavailable"

    def __init__(self, dependency: str) -> None:
        super().__init__("The gateway is temporarily unavailable.", retry_after_ms=1000)
        # Named in logs and /readyz, never in the client's body.
        self.dependency = dependency


class VerificationBusy(GatewayError):
    """The key was not verified: the argon2 capacity for its prefix, its client address
    or this process is spent for now (SPEC §3, §6.2). Never a 401, since nothing was
    found wrong with the key; ``Retry-After`` says when a slot frees."""

    status = 503
    type = "api_error"
    code = "verification_busy"

    def __init__(self, *, retry_after_ms: int) -> None:
        super().__init__("Key verification is busy; retry later.", retry_after_ms=retry_after_ms)


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"

    def __init__(self) -> None:
        super().__init__("The model backend timed out.")


_encode = msgspec.json.Encoder().encode


def render(error: GatewayError, surface: Surface) -> bytes:
    """The JSON body for ``error`` on ``surface``; the only place bodies are shaped."""
    if surface is Surface.OLLAMA:
        return _encode({"error": error.ollama_message()})
    param = error.param if isinstance(error, InvalidRequest) else None
    body = {"message": error.message, "type": error.type, "param": param, "code": error.code}
    return _encode({"error": body})
