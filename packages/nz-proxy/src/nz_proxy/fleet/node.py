"""One Ollama node as the gateway knows it (SPEC §4.10).

Its client and breaker, its catalogue (``/api/tags``, through the same discovery as a
single node had), what it has loaded (``/api/ps``, polled), and the gateway's own
estimates per model: time to first byte (Peak-EWMA: a node that turns slow is avoided
at once), how long a request holds a slot, and how long a load takes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import structlog

from nz_core.routing import DEFAULT_BUSY_S, DEFAULT_LOAD_S, DEFAULT_TTFB_S, Ewma, Node, PeakEwma
from nz_proxy.breaker import BreakerState
from nz_proxy.discovery import Catalogue, Discovery
from nz_proxy.errors import GatewayError
from nz_proxy.fleet.residency import Resident, residency_from_ps, warm
from nz_proxy.upstream import StreamBroken, Upstream

__all__ = ["Backend", "BackendSpec"]

log = structlog.get_logger("nz_proxy.fleet.node")

# A model just loaded by a request is warm until the next /api/ps says otherwise;
# Ollama's default keep_alive is five minutes.
ASSUMED_RESIDENCY_S = 300.0


class BackendSpec(Protocol):
    """A node's configuration: a row of ``gateway.backends``, or one derived from
    ``OLLAMA_BASE_URL(S)`` while the table is empty."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def parallel(self) -> int: ...
    @property
    def status(self) -> str: ...


@dataclass(slots=True)
class Estimates:
    ttfb: PeakEwma = field(default_factory=lambda: PeakEwma(DEFAULT_TTFB_S))
    busy: Ewma = field(default_factory=lambda: Ewma(DEFAULT_BUSY_S))
    load: Ewma = field(default_factory=lambda: Ewma(DEFAULT_LOAD_S))


class Backend:
    def __init__(self, spec: BackendSpec, upstream: Upstream, discovery: Discovery) -> None:
        self.name = spec.name
        self.url = spec.url
        self.parallel = spec.parallel
        self.status = spec.status
        self.upstream = upstream
        self.discovery = discovery
        self.residents: dict[str, Resident] = {}
        self.estimates: dict[str, Estimates] = {}
        self.loads = 0  # cold routes sent here by this process (metrics)
        self.local_in_flight = 0  # this process's requests (closing waits for them)
        self.idle = asyncio.Event()
        self.idle.set()

    def update(self, spec: BackendSpec) -> None:
        self.parallel = spec.parallel
        self.status = spec.status

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def open(self) -> bool:
        """The breaker is open and not ready for its half-open probe."""
        breaker = self.upstream.breaker
        if breaker.state is not BreakerState.OPEN:
            return False
        return breaker.clock() - breaker.opened_at < breaker.reset_s

    def catalogue(self) -> Catalogue | None:
        return self.discovery.current()

    def has(self, model: str) -> bool:
        catalogue = self.catalogue()
        return catalogue is not None and model in catalogue.entries

    def estimate(self, model: str) -> Estimates:
        found = self.estimates.get(model)
        if found is None:
            found = self.estimates[model] = Estimates()
        return found

    def view(self, model: str, num_ctx: int | None, in_flight: int, loading: bool) -> Node:
        """The node as :func:`nz_core.routing.route` weighs it for one request."""
        estimate = self.estimate(model)
        return Node(
            name=self.name,
            parallel=self.parallel,
            in_flight=in_flight,
            resident=warm(self.residents.get(model), num_ctx, time.time()),
            loading=loading,
            ttfb_s=estimate.ttfb.value,
            busy_s=estimate.busy.value,
            load_s=estimate.load.value,
        )

    def now_resident(self, model: str, num_ctx: int | None) -> None:
        """A request just loaded ``model`` here: warm until ``/api/ps`` says otherwise."""
        self.residents[model] = Resident(num_ctx, time.time() + ASSUMED_RESIDENCY_S)

    async def refresh_residency(self) -> bool:
        """Poll ``/api/ps`` once; returns whether the node answered."""
        try:
            reply = await self.upstream.send("GET", "/api/ps", guarded=False)
            body = await reply.read()
            if reply.status != 200:
                raise StreamBroken(f"status {reply.status}")
            self.residents = residency_from_ps(msgspec.json.decode(body))
        except (GatewayError, StreamBroken, msgspec.DecodeError, AttributeError) as exc:
            log.warning("residency_failed", backend=self.name, error=type(exc).__name__)
            # A node that does not say what it has loaded may have lost it (a restart):
            # nothing is warm there until it says so.
            self.residents = {}
            return False
        return True
