"""The one HTTP client to the backend (SPEC §4.7), behind a small interface.

aiohttp was chosen by measurement: at 64 concurrent clients a bare Granian pass-through
did about 13,900 requests/s with aiohttp, 4,600 with httpx over the httpx-aiohttp
transport and 600 with plain httpx 0.28 (SPEC §13). Only this module knows which
library it is; the rest of the gateway sees :class:`Upstream` and :class:`Reply`.

One pooled session per process; a short connect timeout; a read timeout long enough
for a model to load. Bodies are never buffered when streamed: :meth:`Reply.chunks`
yields what arrives.

The circuit breaker hears only what says the node is unhealthy (SPEC §3, "breaker
poisoning"). A connection refused or not made in time is the node down. Any answer in
Ollama's own error shape is the node up, whatever its status: Ollama answers some bad
requests (an option of the wrong type, a model too large for memory) with 500, and one
tenant's bad requests must not take the node away from everyone. What is ambiguous (a
read timeout, a connection dropped mid-answer, a 5xx that is not Ollama's) may be the
request's fault or the node's: a liveness probe (``GET /api/version``) decides, and only
its failure counts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from enum import Enum
from typing import Final

import aiohttp
import msgspec
import structlog

from nz_proxy.breaker import CircuitBreaker
from nz_proxy.errors import UpstreamTimeout, UpstreamUnavailable

__all__ = ["Reply", "StreamBroken", "Upstream", "client_safe", "error_message"]

log = structlog.get_logger("nz_proxy.upstream")

_JSON: Final = {"Content-Type": "application/json"}
# An error answer is read whole to tell Ollama's own errors from anything else.
MAX_ERROR_BYTES: Final = 64 << 10
PROBE_PATH: Final = "/api/version"
TAIL_BYTES: Final = 1024


class StreamBroken(Exception):
    """The backend failed after the response had started."""


class _Health(Enum):
    UP = "up"  # the node answered
    DOWN = "down"  # the node could not be reached
    SUSPECT = "suspect"  # the node or the request: a liveness probe decides


class _ErrorBody(msgspec.Struct):
    error: str


_decode_error: Final = msgspec.json.Decoder(_ErrorBody).decode


# What a backend message must not show a client (SPEC §6.1): URLs, IP addresses (v4,
# v6, with or without a port), host:port pairs, host names and file system paths.
_INTERNAL: Final = re.compile(
    r"[a-z][a-z0-9+.-]*://\S+"
    r"|\[[0-9a-f:.]+(?:%\w+)?\](?::\d+)?"
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"
    r"|(?<![\w:])[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:%\w+)?(?![\w:])"
    r"|\b[\w.-]+:\d{2,5}\b"
    # two labels or more, the last a name (so `llama3.2` and `e.g.` stay)
    r"|\b(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z][a-z0-9-]*[a-z0-9]\b"
    r"|\blocalhost\b"
    r"|(?:[a-z]:)?(?:[/\\][\w.@+~-]+){2,}",
    re.IGNORECASE,
)
MAX_DETAIL_CHARS: Final = 300


def client_safe(message: str) -> str:
    """A backend's error message as a client may read it: its first line (what
    follows is a runner's output, a stack trace at worst), what names an internal
    address, host or path replaced by ``[…]``, no control characters, at most 300
    characters."""
    first = message.strip().split("\n", 1)[0]
    if len(first) > MAX_DETAIL_CHARS * 4:  # cut between words: no half address is left
        first = first[: MAX_DETAIL_CHARS * 4].rsplit(" ", 1)[0]
    text = _INTERNAL.sub("[…]", first)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 1].rstrip() + "…"
    return text


def error_message(body: bytes) -> str | None:
    """The message of an answer in Ollama's error shape (``{"error": "…"}``), else None."""
    try:
        return _decode_error(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class Reply:
    """A backend response whose headers have arrived; the body is read on demand."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        upstream: Upstream | None,
        body: bytes | None = None,
    ) -> None:
        self._response = response
        self._upstream = upstream  # None: not guarded, failures are nobody's concern
        self._body = body
        self.status = response.status
        # The answer's last two chunks, where Ollama's final frame says how long the
        # load took (routing learns from it: nz_proxy.fleet). Kept, not copied: every
        # chunk of every stream passes here.
        self._last: tuple[bytes, bytes] = (b"", b"")

    @property
    def content_type(self) -> str:
        return self._response.content_type

    async def read(self) -> bytes:
        if self._body is not None:
            return self._body
        try:
            body = await self._response.read()
            self._last = (b"", body)
            return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._broken()
            raise StreamBroken(type(exc).__name__) from None
        finally:
            self._response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. A failure mid-way raises :class:`StreamBroken`."""
        try:
            async for chunk in self._response.content.iter_any():
                self._last = (self._last[1], chunk)
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._broken()
            raise StreamBroken(type(exc).__name__) from None

    @property
    def tail(self) -> bytes:
        """The last bytes read (up to ``TAIL_BYTES``)."""
        previous, last = self._last
        return (previous[-TAIL_BYTES:] + last[-TAIL_BYTES:])[-TAIL_BYTES:]

    def _broken(self) -> None:
        if self._upstream is not None:
            self._upstream.suspect()

    def abort(self) -> None:
        """Drop the connection, so the backend sees the client leave and stops."""
        self._response.close()

    def release(self) -> None:
        self._response.release()


class Upstream:
    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        breaker: CircuitBreaker,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.breaker = breaker
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        # A liveness probe answers quickly or the node is not well.
        self._probe_timeout = aiohttp.ClientTimeout(total=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._probe: asyncio.Task[None] | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, method: str, path: str, body: bytes | None = None, *, guarded: bool = True
    ) -> Reply:
        """Send a request and wait for the response headers.

        ``guarded`` requests pass the circuit breaker and tell it how the node did;
        background probes (discovery, readiness) are not guarded. An answer with a
        status of 500 or more has been read already (:meth:`Reply.read` returns it).

        Raises:
            UpstreamUnavailable: circuit open, connection refused or failed.
            UpstreamTimeout: no response before the read timeout.
        """
        if self._session is None:
            raise RuntimeError("Upstream.start() was not called")
        probe = self.breaker.before() if guarded else False
        try:
            response = await self._session.request(
                method,
                self.base_url + path,
                data=body,
                headers=_JSON if body is not None else None,
            )
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError):
            self._heard(guarded, probe, _Health.DOWN)
            raise UpstreamUnavailable from None
        except (aiohttp.ServerTimeoutError, TimeoutError):
            self._heard(guarded, probe, _Health.SUSPECT)
            raise UpstreamTimeout from None
        except aiohttp.ClientError:
            self._heard(guarded, probe, _Health.SUSPECT)
            raise UpstreamUnavailable from None
        except asyncio.CancelledError:
            if guarded:
                self.breaker.abandoned(probe)
            raise
        if not guarded:
            return Reply(response, None)
        if response.status < 500:
            self._heard(guarded, probe, _Health.UP)
            return Reply(response, self)
        try:
            error_body = await response.content.read(MAX_ERROR_BYTES)
        except (aiohttp.ClientError, TimeoutError):
            self._heard(guarded, probe, _Health.SUSPECT)
            raise UpstreamUnavailable from None
        finally:
            response.release()
        ollama_said = error_message(error_body) is not None
        self._heard(guarded, probe, _Health.UP if ollama_said else _Health.SUSPECT)
        return Reply(response, self, error_body)

    def _heard(self, guarded: bool, probe: bool, health: _Health) -> None:
        if not guarded:
            return
        if health is _Health.UP:
            self.breaker.success()
        elif health is _Health.DOWN or probe:
            # The half-open probe must prove the node well; doubt keeps it open.
            self.breaker.failure()
        else:
            self.suspect()

    def suspect(self) -> None:
        """Something went wrong that the request itself may have caused: probe the
        node's liveness (one probe at a time) and count only a failed probe."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._check_liveness())

    async def _check_liveness(self) -> None:
        if self._session is None:
            return
        try:
            async with self._session.get(
                self.base_url + PROBE_PATH, timeout=self._probe_timeout
            ) as response:
                await response.read()
                alive = response.status < 500
        except (aiohttp.ClientError, TimeoutError):
            alive = False
        if not alive:
            log.warning("backend_liveness_failed", backend=self.base_url)
            self.breaker.failure()
