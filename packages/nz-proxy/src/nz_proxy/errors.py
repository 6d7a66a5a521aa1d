"""The data plane's error tree, and its one mapping to HTTP.

Every refusal the gateway makes is one of these exceptions. Handlers and the request
path raise them; :func:`render` turns one into the body of the surface it happened on
(OpenAI's nested object on ``/v1``, Ollama's flat string on ``/api``). Nothing else
in the package writes an error body, so every surface stays consistent (SPEC §6).

``GatewayError``
    ``InvalidRequest`` (400), ``InvalidApiKey`` (401), ``PermissionDenied`` (403:
    ``ModelNotAllowed``, ``EndpointBlocked``, ``ScopeMissing``), ``RouteNotFound``
    (404), ``MethodNotAllowed`` (405), ``RequestTooLarge`` (413),
    ``UnsupportedEncoding`` (415), ``LimitExceeded`` (429), ``BudgetExhausted`` (429),
    ``UpstreamRejected`` (the backend's 4xx), ``UpstreamUnavailable`` (502),
    ``GatewayUnavailable`` (503), ``VerificationBusy`` (503), ``UpstreamTimeout`` (504).

A refusal that waiting cures says how long in its message too (``retry in 12 s.``),
not only in ``Retry-After``: chat front-ends such as Open WebUI show the body alone.
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
    "UnsupportedEncoding",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "VerificationBusy",
    "render",
    "wait_in_words",
]


def wait_in_words(ms: int) -> str:
    """A wait as a person reads it, never shorter than the ``Retry-After`` it goes
    with: ``12 s``, ``4 min 10 s``, ``5 h 20 min``, ``3 d 4 h``. Up to a minute (every
    rate limit's wait, SPEC §4.4) it is the ``Retry-After`` number itself."""
    seconds = max(1, -(-ms // 1000))
    if seconds <= 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if seconds < 86_400:
        hours, minutes = divmod(-(-seconds // 60), 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(-(-seconds // 3600), 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


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
    """Over ``MAX_REQUEST_BYTES`` as sent or, for a compressed body, once ``decoded``."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, limit: int, *, decoded: bool = False) -> None:
        if decoded:
            super().__init__(f"Request body exceeds {limit} bytes once decompressed.")
        else:
            super().__init__(f"Request body exceeds {limit} bytes.")


class UnsupportedEncoding(GatewayError):
    """A ``Content-Encoding`` the gateway does not undo; ``Accept-Encoding`` lists the
    ones it does (RFC 9110 §15.5.16)."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_encoding"

    def __init__(self, message: str, *, accepted: tuple[str, ...]) -> None:
        super().__init__(message)
        self.accepted = accepted

    def headers(self) -> dict[str, str]:
        return {"Accept-Encoding": ", ".join(self.accepted)}


class LimitExceeded(GatewayError):
    """rpm, tpm, concurrency or the listing allowance; ``code`` names which. The
    message gets the wait appended: ``Request rate limit reached; retry in 12 s.``"""

    status = 429
    type = "rate_limit_exceeded"

    def __init__(self, code: str, message: str, *, retry_after_ms: int) -> None:
        worded = f"{message.removesuffix('.')}; retry in {wait_in_words(retry_after_ms)}."
        super().__init__(worded, retry_after_ms=retry_after_ms)
        self.code = code


class BudgetExhausted(GatewayError):
    """The binding budget period cannot hold the request; a ``total`` never resets."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exhausted"

    def __init__(self, period: str, *, retry_after_ms: int | None) -> None:
        message = f"Token budget exhausted for period '{period}'"
        if retry_after_ms is None:
            message += ", which never resets; ask for a larger budget."
        else:
            message += f"; retry in {wait_in_words(retry_after_ms)}, when it resets."
        super().__init__(message, retry_after_ms=retry_after_ms)
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
        super().__init__(
            f"Key verification is busy; retry in {wait_in_words(retry_after_ms)}.",
            retry_after_ms=retry_after_ms,
        )


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
