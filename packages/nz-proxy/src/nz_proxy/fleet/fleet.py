"""The Ollama nodes behind the gateway, and which one serves a request (SPEC §4.10).

:class:`Fleet` keeps one :class:`~nz_proxy.fleet.node.Backend` per configured node,
follows configuration changes (:meth:`Fleet.apply`), answers what the nodes have
between them (:meth:`Fleet.require`: the union of the catalogues of nodes that are
active and not open-circuit), and sends a request to the node the routing rule picks
(:meth:`Fleet.send`), retrying once on another node when the first could not be
reached or said it is unavailable, always before the first byte reaches the client.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import structlog

from nz_core.routing import Reason, route
from nz_proxy.discovery import Catalogue, CatalogueStore, Discovery
from nz_proxy.errors import GatewayError, UpstreamUnavailable
from nz_proxy.fleet.inflight import InFlightStore
from nz_proxy.fleet.node import Backend, BackendSpec
from nz_proxy.upstream import Reply, StreamBroken, Upstream

__all__ = ["Calls", "Fleet", "Routed", "Sender"]

log = structlog.get_logger("nz_proxy.fleet")

# Statuses a node answers when it is the node, not the request: another may serve it.
RETRYABLE_STATUSES = frozenset({502, 503})
# A load mark outlives a load that never reports back by this long at most.
LOADING_MARK_MS = 120_000
# A load_duration shorter than this is a warm start, not a load.
REAL_LOAD_S = 0.5
_LOAD_DURATION = re.compile(rb'"load_duration"\s*:\s*(\d+)')
# A context length no node would tell is asked for again after this long.
UNKNOWN_RETRY_S = 10.0


class Sender(Protocol):
    """What sends one backend call (an :class:`Upstream`, or :class:`Calls`)."""

    async def send(self, method: str, path: str, body: bytes | None = None) -> Reply: ...


@dataclass(slots=True)
class Routed:
    """A request a node has answered (headers in); :meth:`finish` when it is over."""

    fleet: Fleet
    backend: Backend
    reply: Reply
    model: str
    rid: str
    reason: Reason
    started: float = field(default_factory=time.monotonic)
    _done: bool = False

    def finish(self) -> None:
        """The request is over: free its slot, and learn how long a warm request holds
        one (a queued or cold one's time includes waiting), and how long a load took
        (the final frame's ``load_duration``)."""
        if self._done:
            return
        self._done = True
        estimate = self.backend.estimate(self.model)
        if self.reason is Reason.WARM:
            estimate.busy.observe(time.monotonic() - self.started)
        loaded_s = load_duration_s(self.reply.tail)
        if loaded_s is not None and loaded_s >= REAL_LOAD_S:
            estimate.load.observe(loaded_s)
        self.fleet.release(self.backend, self.rid)


def load_duration_s(tail: bytes) -> float | None:
    """The ``load_duration`` (nanoseconds) of the last frame in ``tail``, in seconds."""
    found = _LOAD_DURATION.findall(tail)
    return int(found[-1]) / 1e9 if found else None


class Calls:
    """The backend calls of one request, each to the node the fleet picks for it (a
    request for several choices makes several); :meth:`finish` ends them all."""

    def __init__(self, fleet: Fleet, model: str, num_ctx: int | None, rid: str) -> None:
        self.fleet = fleet
        self.model = model
        self.num_ctx = num_ctx
        self.rid = rid
        self.routed: list[Routed] = []

    async def send(self, method: str, path: str, body: bytes | None = None) -> Reply:
        rid = self.rid if not self.routed else f"{self.rid}:{len(self.routed)}"
        routed = await self.fleet.send(self.model, self.num_ctx, rid, path, body or b"")
        self.routed.append(routed)
        return routed.reply

    @property
    def backend(self) -> str | None:
        """The node of the first call (the audit row names one)."""
        return self.routed[0].backend.name if self.routed else None

    def finish(self) -> None:
        for routed in self.routed:
            routed.finish()


class Fleet:
    def __init__(
        self,
        connect: Callable[[str], Upstream],
        inflight: InFlightStore,
        catalogue_store: Callable[[str], CatalogueStore],
        *,
        refresh_s: float,
        ttl_s: float,
        lease_ms: int,
    ) -> None:
        self.connect = connect
        self.inflight = inflight
        self.catalogue_store = catalogue_store
        self.refresh_s = refresh_s
        self.ttl_s = ttl_s
        self.lease_ms = lease_ms
        self.backends: dict[str, Backend] = {}
        self.decisions: dict[tuple[str, str], int] = {}  # (backend, reason) → count
        self._held: set[tuple[str, str]] = set()
        self._closing: set[asyncio.Task[None]] = set()  # removed nodes closing once idle
        self._context: dict[str, tuple[int | None, float]] = {}  # model → (length, until)

    # -- configuration ---------------------------------------------------------------

    async def apply(self, specs: Sequence[BackendSpec]) -> None:
        """Follow the configured nodes: start new ones (their catalogue is read before
        they take requests), update changed ones, and let removed ones finish what they
        are serving before their client closes."""
        wanted = {spec.name: spec for spec in specs}
        for name, backend in list(self.backends.items()):
            spec = wanted.get(name)
            if spec is None or spec.url.rstrip("/") != backend.url.rstrip("/"):
                del self.backends[name]
                self._close_when_idle(backend)
        fresh: list[Backend] = []
        for name, spec in wanted.items():
            if name in self.backends:
                self.backends[name].update(spec)
                continue
            upstream = self.connect(spec.url)
            await upstream.start()
            discovery = Discovery(
                upstream, self.catalogue_store(name), refresh_s=self.refresh_s, ttl_s=self.ttl_s
            )
            fresh.append(Backend(spec, upstream, discovery))
        await asyncio.gather(*(self._first_look(backend) for backend in fresh))
        for backend in fresh:
            self.backends[backend.name] = backend
            log.info("backend_added", backend=backend.name, parallel=backend.parallel)

    async def _first_look(self, backend: Backend) -> None:
        await asyncio.gather(backend.discovery.refresh(), backend.refresh_residency())

    def _close_when_idle(self, backend: Backend) -> None:
        async def close() -> None:
            await backend.idle.wait()
            await backend.upstream.close()
            log.info("backend_removed", backend=backend.name)

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- what the nodes have ---------------------------------------------------------

    def usable(self) -> list[Backend]:
        """Nodes that may take new requests: active, breaker not open."""
        return [b for b in self.backends.values() if b.active and not b.open]

    def current(self) -> Catalogue | None:
        """The union of the usable nodes' catalogues, or None when none is known."""
        catalogues = [c for b in self.usable() if (c := b.catalogue()) is not None]
        if not catalogues:
            return None
        entries: dict[str, dict[str, object]] = {}
        for catalogue in sorted(catalogues, key=lambda c: c.fetched_at, reverse=True):
            for name, entry in catalogue.entries.items():
                entries.setdefault(name, entry)
        return Catalogue(fetched_at=min(c.fetched_at for c in catalogues), entries=entries)

    def require(self) -> Catalogue:
        """The models the usable nodes have between them.

        Raises:
            UpstreamUnavailable: no node is usable or none has a current catalogue;
                ``Retry-After`` is the soonest a node may be back.
        """
        catalogue = self.current()
        if catalogue is not None:
            return catalogue
        raise UpstreamUnavailable(retry_after_ms=self._soonest_ms())

    def _soonest_ms(self) -> int:
        """When a node may serve again: an open breaker's time left, or a silent node's
        next catalogue poll; the soonest of them."""
        waits: list[float] = []
        for backend in self.backends.values():
            if not backend.active:
                continue
            breaker = backend.upstream.breaker
            if backend.open:
                waits.append((breaker.reset_s - (breaker.clock() - breaker.opened_at)) * 1000)
            elif backend.catalogue() is None:
                waits.append(backend.discovery.retry_after_ms())
        return max(1000, int(min(waits, default=self.refresh_s * 1000)))

    # -- metadata ----------------------------------------------------------------------

    async def ask(self, path: str, body: bytes | None = None, model: str | None = None) -> Reply:
        """A metadata request to one usable node (one that has ``model``, if given),
        the next one if it cannot be reached.

        Raises:
            UpstreamUnavailable: no usable node answered.
        """
        nodes = [b for b in self.usable() if model is None or b.has(model)]
        nodes.sort(key=lambda b: b.local_in_flight)
        failure: GatewayError = UpstreamUnavailable(retry_after_ms=self._soonest_ms())
        for backend in nodes[:2]:
            try:
                return await backend.upstream.send("POST" if body else "GET", path, body)
            except UpstreamUnavailable as exc:
                failure = exc
        raise failure

    async def context_length(self, model: str) -> int | None:
        """The model's context length (``/api/show``'s ``model_info``), cached like the
        catalogue; None when no node says (an unknown length caps nothing)."""
        now = time.monotonic()
        cached = self._context.get(model)
        if cached is not None and now < cached[1]:
            return cached[0]
        length: int | None = None
        try:
            reply = await self.ask("/api/show", msgspec.json.encode({"model": model}), model)
            if reply.status == 200:
                info = msgspec.json.decode(await reply.read()).get("model_info") or {}
                length = next(
                    (
                        value
                        for key, value in info.items()
                        if key.endswith(".context_length") and type(value) is int and value > 0
                    ),
                    None,
                )
        except (GatewayError, StreamBroken, msgspec.DecodeError, AttributeError) as exc:
            log.warning("context_length_unknown", model=model, error=type(exc).__name__)
        # A failure is asked again soon; a length stays as long as the catalogue.
        self._context[model] = (length, now + (self.ttl_s if length else UNKNOWN_RETRY_S))
        return length

    async def ask_each(self, path: str) -> list[Reply]:
        """``GET path`` from every usable node at once: the answers of those that
        answered (listings are unions; a node down leaves out only its part).

        Raises:
            UpstreamUnavailable: none answered.
        """
        nodes = self.usable()
        replies = await asyncio.gather(
            *(b.upstream.send("GET", path) for b in nodes), return_exceptions=True
        )
        answered = [reply for reply in replies if isinstance(reply, Reply)]
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, GatewayError):
                raise reply
        if not answered:
            raise UpstreamUnavailable(retry_after_ms=self._soonest_ms())
        return answered

    # -- sending ---------------------------------------------------------------------

    async def send(
        self,
        model: str,
        num_ctx: int | None,
        rid: str,
        path: str,
        body: bytes,
    ) -> Routed:
        """Send ``body`` to the node chosen for ``model``; one retry on another node if
        the first cannot be reached or answers 502/503.

        Raises:
            UpstreamUnavailable: no node can serve the model now.
            UpstreamTimeout: the chosen node did not answer in time (never retried: it
                may be generating).
        """
        tried: set[str] = set()
        failure: GatewayError | None = None
        for attempt in range(2):
            candidates = [b for b in self.usable() if b.name not in tried and b.has(model)]
            if not candidates:
                break
            loads = self.inflight.read([b.name for b in candidates], model)
            views = [
                backend.view(model, num_ctx, in_flight, loading)
                for backend, (in_flight, loading) in zip(candidates, loads, strict=True)
            ]
            choice = route(views)
            if choice is None:
                break
            backend = next(b for b in candidates if b.name == choice.node.name)
            tried.add(backend.name)
            self._count(backend.name, choice.reason)
            log.debug("routed", model=model, backend=backend.name, reason=choice.reason.value)
            started = time.monotonic()
            self._hold(backend, rid, model, choice.reason)
            try:
                reply = await backend.upstream.send("POST", path, body)
            except UpstreamUnavailable as exc:
                self.release(backend, rid)
                failure = exc
                continue
            except BaseException:  # the client left: the slot is freed all the same
                self.release(backend, rid)
                raise
            if reply.status in RETRYABLE_STATUSES and attempt == 0 and self._others(model, tried):
                self.release(backend, rid)
                failure = UpstreamUnavailable()
                continue
            self._answered(backend, model, num_ctx, choice.reason, time.monotonic() - started)
            return Routed(self, backend, reply, model, rid, choice.reason, started)
        raise failure or UpstreamUnavailable(retry_after_ms=self._soonest_ms())

    def _others(self, model: str, tried: set[str]) -> bool:
        return any(b.name not in tried and b.has(model) for b in self.usable())

    def _count(self, backend: str, reason: Reason) -> None:
        key = (backend, reason.value)
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def _hold(self, backend: Backend, rid: str, model: str, reason: Reason) -> None:
        backend.local_in_flight += 1
        backend.idle.clear()
        self._held.add((backend.name, rid))
        self.inflight.acquire(backend.name, rid, self.lease_ms)
        if reason in (Reason.SPILL, Reason.COLD):
            backend.loads += 1
            self.inflight.mark_loading(backend.name, model, LOADING_MARK_MS)

    def _answered(
        self, backend: Backend, model: str, num_ctx: int | None, reason: Reason, ttfb: float
    ) -> None:
        """Headers arrived, which Ollama sends once the model is loaded."""
        if reason is Reason.WARM:
            backend.estimate(model).ttfb.observe(ttfb)  # a queued wait is not the node's pace
        elif reason is not Reason.QUEUE:
            backend.now_resident(model, num_ctx)
            self.inflight.loaded(backend.name, model)

    def release(self, backend: Backend, rid: str) -> None:
        if (backend.name, rid) not in self._held:
            return
        self._held.discard((backend.name, rid))
        backend.local_in_flight -= 1
        if not backend.local_in_flight:
            backend.idle.set()
        self.inflight.release(backend.name, rid)

    # -- background work -------------------------------------------------------------

    def until_next_poll(self) -> float:
        """Seconds until some node's catalogue is due (a silent node's every 2 s)."""
        due = [b.discovery.until_next_poll() for b in self.backends.values()]
        return min(due, default=self.refresh_s)

    async def catalogue_step(self) -> float:
        """Read the catalogues that are due (a supervised step)."""
        due = [b for b in self.backends.values() if b.discovery.until_next_poll() <= 0]
        await asyncio.gather(*(backend.discovery.refresh() for backend in due))
        return self.until_next_poll()

    async def residency_step(self, interval_s: float) -> float:
        """Read what every node has loaded (a supervised step)."""
        await asyncio.gather(*(backend.refresh_residency() for backend in self.backends.values()))
        return interval_s

    async def renew_step(self) -> float:
        """Extend the in-flight leases of long requests (a supervised step)."""
        self.inflight.renew(sorted(self._held), self.lease_ms)
        return self.lease_ms / 3000

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.gather(*(b.upstream.close() for b in self.backends.values()))
