"""Which Ollama node serves a request (SPEC §4.10): warm first, two random choices.

Pure: the caller gathers what it knows of each candidate node (a :class:`Node`: its
slots, requests in flight, whether the model is resident with the right context size,
its estimates) and :func:`route` decides. Only candidates reach it: active nodes whose
breaker is not open and whose catalogue has the model.

The rule, and why:

- **Warm with a free slot**: two random choices, the lower ``(in_flight + 1) x TTFB``.
  A cold load costs 10-60 s; anything warm beats it. Two random choices rather than the
  global minimum, because several replicas deciding on slightly stale counts would all
  pile onto the same "best" node (the power of two choices keeps the load even with
  stale information).
- **Every warm node full**: spill over to a cold node with a free slot, and no load of
  the model already running there, only when the expected wait for a warm slot exceeds
  the cold load estimate by a margin; otherwise wait for the warm node with the lowest
  expected wait (Ollama queues the request). Loads evict other tenants' models, so they
  must pay for themselves.
- **Nothing warm**: a load is unavoidable; a node already loading the model is joined
  (its load is half done), else two random choices among nodes with a free slot, by
  load estimate, else the least busy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

__all__ = [
    "DEFAULT_BUSY_S",
    "DEFAULT_LOAD_S",
    "DEFAULT_TTFB_S",
    "SPILL_MARGIN",
    "Choice",
    "Ewma",
    "Node",
    "PeakEwma",
    "Reason",
    "route",
]

# A load nobody has measured yet: Ollama loads take 10-60 s on real GPUs.
DEFAULT_LOAD_S: Final = 20.0
# A time to first byte nobody has measured yet.
DEFAULT_TTFB_S: Final = 0.5
# A request's time on a slot nobody has measured yet.
DEFAULT_BUSY_S: Final = 5.0
# Spill over only when waiting costs this much more than a load: loads evict models.
SPILL_MARGIN: Final = 1.5

_RNG: Final = random.Random()  # noqa: S311 - spreading load, not secrets


class Reason(Enum):
    WARM = "warm"  # resident, free slot
    QUEUE = "queue"  # resident, every slot busy: Ollama queues it
    SPILL = "spill"  # every warm node full and waiting costs more than a load
    JOIN = "join"  # nothing warm; a load of the model is running there
    COLD = "cold"  # nothing warm; a load starts


@dataclass(frozen=True, slots=True)
class Node:
    """One candidate, as the router sees it for one model."""

    name: str
    parallel: int  # the node's OLLAMA_NUM_PARALLEL
    in_flight: int  # requests running there now, every replica's
    resident: bool  # the model is loaded with the context size the request needs
    loading: bool = False  # a request of this model is loading it there now
    ttfb_s: float = DEFAULT_TTFB_S  # time to first byte when warm
    busy_s: float = DEFAULT_BUSY_S  # how long a request holds a slot
    load_s: float = DEFAULT_LOAD_S  # how long a cold load takes

    @property
    def free(self) -> bool:
        return self.in_flight < self.parallel

    @property
    def wait_s(self) -> float:
        """Expected wait for a slot: the requests ahead, served ``parallel`` at a time."""
        ahead = self.in_flight - self.parallel + 1
        return 0.0 if ahead <= 0 else math.ceil(ahead / self.parallel) * self.busy_s


@dataclass(frozen=True, slots=True)
class Choice:
    node: Node
    reason: Reason


def route(candidates: Sequence[Node], rng: random.Random | None = None) -> Choice | None:
    """The node for one request, or ``None`` when there is no candidate at all."""
    if not candidates:
        return None
    pick = rng or _RNG
    warm = [node for node in candidates if node.resident]
    free_warm = [node for node in warm if node.free]
    if free_warm:
        return Choice(_two_choices(free_warm, _warm_cost, pick), Reason.WARM)
    if warm:
        soonest = min(warm, key=lambda node: node.wait_s)
        cold = [node for node in candidates if not node.resident and node.free]
        cold = [node for node in cold if not node.loading]
        if cold:
            best = _two_choices(cold, _load_cost, pick)
            if soonest.wait_s > best.load_s * SPILL_MARGIN:
                return Choice(best, Reason.SPILL)
        return Choice(soonest, Reason.QUEUE)
    joining = [node for node in candidates if node.loading]
    if joining:
        return Choice(min(joining, key=lambda node: node.in_flight / node.parallel), Reason.JOIN)
    free = [node for node in candidates if node.free]
    if free:
        return Choice(_two_choices(free, _load_cost, pick), Reason.COLD)
    return Choice(min(candidates, key=lambda node: node.wait_s + node.load_s), Reason.COLD)


def _warm_cost(node: Node) -> float:
    return (node.in_flight + 1) * node.ttfb_s


def _load_cost(node: Node) -> float:
    return node.load_s + node.in_flight * node.busy_s / node.parallel


def _two_choices(nodes: Sequence[Node], cost: Callable[[Node], float], pick: random.Random) -> Node:
    if len(nodes) == 1:
        return nodes[0]
    first, second = pick.sample(nodes, 2)
    return min(first, second, key=cost)


class Ewma:
    """An exponentially weighted moving average with a prior (used until measured)."""

    def __init__(self, prior: float, alpha: float = 0.3) -> None:
        self.value = prior
        self.alpha = alpha
        self.measured = False

    def observe(self, sample: float) -> None:
        if not self.measured:
            self.value, self.measured = sample, True
        else:
            self.value += self.alpha * (sample - self.value)


class PeakEwma(Ewma):
    """An EWMA that jumps up at once and decays slowly (Finagle's Peak-EWMA): a node
    that turns slow is avoided at the first slow answer, not after several."""

    def observe(self, sample: float) -> None:
        if sample > self.value or not self.measured:
            self.value, self.measured = sample, True
        else:
            self.value += self.alpha * (sample - self.value)
