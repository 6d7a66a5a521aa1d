"""One request as the gateway sees it, from its first byte to its audit row.

The outermost ASGI layer (:mod:`nz_proxy.recorder`) opens an :class:`Exchange` for
every HTTP request, before routing, so that 404s and 405s are covered too; the
request path fills it in (key, tenant, model, tokens) and the recorder closes it
exactly once: one log line, one audit row, the metrics.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from nz_core.credentials import KeyPolicy
from nz_proxy.errors import GatewayError, GatewayUnavailable, Surface
from nz_proxy.types import AsgiScope

__all__ = [
    "MAX_CLIENT_TEXT",
    "SCOPE_KEY",
    "Exchange",
    "Network",
    "clean_text",
    "client_address",
    "exchange_of",
    "redact_path",
    "request_id_from",
    "surface_of",
    "uuid7",
]

SCOPE_KEY: Final = "nz.exchange"
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_KEY_TAIL: Final = re.compile(r"(nz_[0-9A-Za-z]{9})[0-9A-Za-z]+", re.IGNORECASE)
# C0 and C1 controls (NUL included: PostgreSQL refuses it in text), DEL, lone surrogates.
_UNPRINTABLE: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# What the audit row and the log keep of a string the client chose (a model name).
MAX_CLIENT_TEXT: Final = 200


def clean_text(text: str, limit: int = MAX_CLIENT_TEXT) -> str:
    """A client's string as it may enter an audit row, a log line or a metrics label:
    anything shaped like an API key cut to its prefix, control characters and lone
    surrogates replaced by U+FFFD, at most ``limit`` characters. Applied where the
    string enters the exchange, so nothing downstream can stall on it (SPEC §3)."""
    text = text[: limit * 2]  # enough to find a key that starts inside the limit
    text = _KEY_TAIL.sub("\\1…", text)
    if not text.isascii() or not text.isprintable():
        text = _UNPRINTABLE.sub("\ufffd", text)
    return text[:limit]


def redact_path(path: str) -> str:
    """A path no route matched, as it may be logged and audited: anything shaped like
    an API key is cut to its prefix (a key pasted into a URL must not reach the logs),
    and what the database or a log could choke on is replaced (:func:`clean_text`)."""
    return clean_text(path)


def request_id_from(value: bytes | None) -> str:
    """The client's ``X-Request-ID`` when it is safe to echo, else a new one."""
    if value:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if _REQUEST_ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): audit rows are inserted in index order."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant
    return uuid.UUID(int=value)


def surface_of(path: str) -> Surface:
    if path.startswith("/v1/") or path == "/v1":
        return Surface.OPENAI
    if path.startswith("/api/") or path == "/api":
        return Surface.OLLAMA
    return Surface.PLAIN


def client_address(
    peer: str | None, forwarded_for: bytes | None, trusted: Sequence[Network]
) -> str | None:
    """The client's address: the peer's, unless the peer is a trusted proxy, in which case
    the right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy."""
    if peer is None or not trusted or not forwarded_for or not _within(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.decode("latin-1").split(",")]
    for hop in reversed(hops):
        if not hop:
            continue
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a garbled header is not evidence of anything
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            return peer  # a zone (`fe80::1%…`) takes any text: not an address a client has
        if not _within(hop, trusted):
            return hop
    return peer


def _within(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


@dataclass(slots=True)
class Exchange:
    """Everything the log line, the audit row and the metrics need about one request."""

    id: uuid.UUID  # the audit row's key, and the state stores' per-request key
    request_id: str  # what the client sees (its own X-Request-ID when it sent one)
    method: str
    path: str
    surface: Surface
    client_ip: str | None
    started: float
    ts: datetime
    endpoint: str = ""
    key_prefix: str | None = None
    policy: KeyPolicy | None = None
    model: str | None = None
    # The model passed the key's policy: only then may it become a metrics label.
    model_allowed: bool = False
    stream: bool = False
    backend: str | None = None  # the node that served it (never shown to the client)
    status: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    ttft_ms: int | None = None
    error: str | None = None
    # The dependency behind a 503, for the log line only (never the client's body).
    cause: str | None = None
    # False for probes (/healthz, /metrics, ...) that are not API traffic.
    audited: bool = True
    # Its row was also journaled beside its reservation: release it once written.
    journaled: bool = False
    # Its settlement waits for the state store, and its audit row waits with it.
    row_owed: bool = False

    @classmethod
    def begin(cls, scope: AsgiScope, trusted: Sequence[Network]) -> Exchange:
        headers = dict(scope["headers"])
        client = scope.get("client")
        path: str = scope["path"]
        return cls(
            id=uuid7(),
            request_id=request_id_from(headers.get(b"x-request-id")),
            method=scope["method"],
            path=path,
            surface=surface_of(path),
            client_ip=client_address(
                client[0] if client else None, headers.get(b"x-forwarded-for"), trusted
            ),
            started=time.perf_counter(),
            ts=datetime.now(UTC),
        )

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def failed(self, error: GatewayError) -> None:
        """Record the error the client gets, and which dependency failed, if one did."""
        self.error = error.code
        if isinstance(error, GatewayUnavailable):
            self.cause = error.dependency

    def note_model(self, requested: str) -> None:
        """The model the client asked for, as the audit and the log may keep it."""
        self.model = clean_text(requested)

    def first_byte(self) -> None:
        """Mark the time to first token (the first body byte of a stream)."""
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()


def exchange_of(scope: AsgiScope) -> Exchange:
    exchange: Exchange = scope[SCOPE_KEY]
    return exchange
