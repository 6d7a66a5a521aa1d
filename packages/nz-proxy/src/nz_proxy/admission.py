"""Admission and settlement: the one seam where limits and budgets apply (SPEC §4).

Every request that reaches the backend is admitted once before it is forwarded (step
4) and settled once after (step 6), whatever happens in between. The request path
sees only :class:`Admission`; what stands behind it decides how much is enforced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from nz_core.credentials import KeyPolicy
from nz_core.limiter import Ask
from nz_proxy.state import Settled

__all__ = ["Admission", "Demand", "Ticket"]


@dataclass(frozen=True, slots=True)
class Demand:
    """What a request asks of its key's limits."""

    request_key: str  # unique per request (the audit id), never the client's request id
    inference: bool  # generation or embedding, as opposed to listing models
    prompt_estimate: int = 0
    requested_cap: int | None = None  # the completion cap the client asked for
    generates: bool = True  # False for embeddings: no completion, nothing to cap
    journal: bytes = b""  # the audit row as admission knows it (kept by journaling stores)


@dataclass(slots=True)
class Ticket:
    """An admitted request. ``cap`` is the completion cap to forward as
    ``options.num_predict`` (``None``: leave the request as it is)."""

    demand: Demand
    policy: KeyPolicy
    cap: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    ask: Ask | None = None  # what the state store was asked, for settlement
    reserved: int = 0  # tokens held for it until settlement
    admitted_ms: int = 0  # wall clock, for a store that lost the reservation meanwhile


class Admission(Protocol):
    @property
    def journals(self) -> bool:
        """Whether settle() wants the finished audit row."""
        ...

    async def admit(self, policy: KeyPolicy, demand: Demand) -> Ticket:
        """Admit or refuse (``LimitExceeded``, ``BudgetExhausted``, ``GatewayUnavailable``)."""
        ...

    async def settle(
        self, ticket: Ticket, tokens_in: int, tokens_out: int, journal: bytes = b""
    ) -> Settled:
        """Replace the ticket's reservation by what was used. Called exactly once.
        ``PENDING``, and ``UNKNOWN`` with a ``journal``: the admission took the audit
        row and records it itself (once the store answers again, for ``PENDING``)."""
        ...

    async def close(self) -> None:
        """Complete what is still owed (graceful stop)."""
        ...
