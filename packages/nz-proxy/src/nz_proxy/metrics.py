"""Prometheus metrics (SPEC §10), correct across several Granian workers.

Every worker writes to ``PROMETHEUS_MULTIPROC_DIR`` (``serve`` sets it up) and the
``/metrics`` handler, which answers loopback clients only, aggregates them. Labels
are the tenant's name, the model and the route, never a key or anything it carries.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from nz_proxy.exchange import Exchange
from nz_proxy.fleet.fleet import Fleet

__all__ = ["CONTENT_TYPE", "FleetMetrics", "Metrics", "background_failed", "render"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST.encode()
MULTIPROCESS: Final = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "gateway_requests",
    "Requests by tenant, model, route and status.",
    ["tenant", "model", "endpoint", "status"],
)
TOKENS = Counter(
    "gateway_tokens",
    "Tokens by tenant, model and direction (in, out).",
    ["tenant", "model", "direction"],
)
DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from the request's first byte to its last, by tenant, model and route.",
    ["tenant", "model", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
UPSTREAM_FAILURES = Counter(
    "gateway_upstream_failures",
    "Requests the backend failed (502, 504, broken streams).",
    ["kind"],
)
BREAKER = Gauge(
    "gateway_circuit_breaker_state",
    "A backend node's circuit: 0 closed, 1 open, 2 half-open (the worst worker).",
    ["backend"],
    multiprocess_mode="livemax",
)
BACKEND_IN_FLIGHT = Gauge(
    "gateway_backend_in_flight",
    "Requests running on a backend node, every worker's.",
    ["backend"],
    multiprocess_mode="livesum",
)
BACKEND_TTFB = Gauge(
    "gateway_backend_ttfb_seconds",
    "A node's time to first byte for a warm model (the routing estimate, Peak-EWMA).",
    ["backend", "model"],
    multiprocess_mode="livemax",
)
LOADS = Counter(
    "gateway_backend_loads",
    "Requests routed to a node that did not have their model loaded (cold loads).",
    ["backend"],
)
ROUTES = Counter(
    "gateway_routing_decisions",
    "Routing decisions by node and reason (warm, queue, spill, join, cold).",
    ["backend", "reason"],
)
AUDIT_WAITING = Gauge(
    "gateway_audit_rows_waiting",
    "Audit rows not yet written to the database.",
    multiprocess_mode="livesum",
)
BACKGROUND_FAILURES = Counter(
    "gateway_background_failures",
    "Failed steps of background jobs, by job and kind (dependency down, or a crash).",
    ["job", "kind"],
)
AUDIT_LOST = Counter(
    "gateway_audit_rows_lost",
    "Audit rows the database refused even sanitised, and so dropped (each one logged).",
)
VERIFICATIONS = Counter(
    "gateway_key_verifications", "argon2 verifications (cache misses that reached argon2)."
)

# How often the per-node figures are published.
FLEET_EVERY_S: Final = 1.0

_UPSTREAM_CODES: Final = {
    "upstream_unavailable": "unavailable",
    "upstream_timeout": "timeout",
    "upstream_rejected": "rejected",
}


class Metrics:
    """The recorder's observer: one update per finished request."""

    def __init__(
        self,
        audit_waiting: Callable[[], int],
        verifications: Callable[[], int],
        audit_lost: Callable[[], int] = lambda: 0,
    ) -> None:
        self._audit_waiting = audit_waiting
        self._verifications = verifications
        self._verified = 0
        self._audit_lost = audit_lost
        self._lost = 0

    def observe(self, exchange: Exchange) -> None:
        if not exchange.audited:
            return
        tenant = exchange.policy.tenant if exchange.policy else "-"
        # A name the client made up must not become a series: only allowed models do.
        model = exchange.model if exchange.model_allowed and exchange.model else "-"
        # Unrouted paths would make one series per path an attacker invents.
        endpoint = exchange.endpoint or "unmatched"
        REQUESTS.labels(tenant, model, endpoint, str(exchange.status)).inc()
        DURATION.labels(tenant, model, endpoint).observe(exchange.elapsed_ms() / 1000)
        if exchange.tokens_in:
            TOKENS.labels(tenant, model, "in").inc(exchange.tokens_in)
        if exchange.tokens_out:
            TOKENS.labels(tenant, model, "out").inc(exchange.tokens_out)
        if exchange.error in _UPSTREAM_CODES:
            UPSTREAM_FAILURES.labels(_UPSTREAM_CODES[exchange.error]).inc()
        AUDIT_WAITING.set(self._audit_waiting())
        verified = self._verifications()
        if verified > self._verified:
            VERIFICATIONS.inc(verified - self._verified)
            self._verified = verified
        lost = self._audit_lost()
        if lost > self._lost:
            AUDIT_LOST.inc(lost - self._lost)
            self._lost = lost


class FleetMetrics:
    """The per-node figures, published by a background job once a second rather than
    per request: they are gauges and running totals, and a multiprocess gauge write is
    a file write."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._routed: dict[tuple[str, str], int] = {}
        self._loads: dict[str, int] = {}

    async def step(self) -> float:
        """Publish once (a supervised step)."""
        self.publish()
        return FLEET_EVERY_S

    def publish(self) -> None:
        for name, backend in self.fleet.backends.items():
            BREAKER.labels(name).set(backend.upstream.breaker.state.value)
            BACKEND_IN_FLIGHT.labels(name).set(backend.local_in_flight)
            loads = backend.loads - self._loads.get(name, 0)
            if loads > 0:
                LOADS.labels(name).inc(loads)
                self._loads[name] = backend.loads
            for model, estimate in backend.estimates.items():
                if estimate.ttfb.measured:
                    BACKEND_TTFB.labels(name, model).set(estimate.ttfb.value)
        for (name, reason), count in self.fleet.decisions.items():
            new = count - self._routed.get((name, reason), 0)
            if new > 0:
                ROUTES.labels(name, reason).inc(new)
                self._routed[(name, reason)] = count


def background_failed(job: str, kind: str) -> None:
    """The supervisor's report of a failed step (:mod:`nz_proxy.supervisor`)."""
    BACKGROUND_FAILURES.labels(job, kind).inc()


def render() -> bytes:
    """The text exposition of every worker's metrics."""
    if os.environ.get(MULTIPROCESS):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
