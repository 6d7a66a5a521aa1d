"""Admission and settlement: the one seam where limits and budgets apply (SPEC §4).

Every request that reaches the backend is admitted once before it is forwarded (step
4) and settled once after (step 6), whatever happens in between. The request path
sees only :class:`Admission`; what stands behind it decides how much is enforced.

The request path says what it asks (an :class:`~nz_core.limiter.Ask` with its id,
prompt estimate and completion cap); the admission completes it with the key's terms
(limits, budgets, default cap, lease) before asking the state store.

* :mod:`~nz_proxy.admission.governor`: the admission over a state store;
* :mod:`~nz_proxy.admission.backlog`: settlements owed while Redis does not answer;
* :mod:`~nz_proxy.admission.stores`: the state stores, Redis and in-process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from nz_core.credentials import KeyPolicy
from nz_core.limiter import Ask
from nz_proxy.admission.stores import Settled

__all__ = ["Admission", "Ask", "Ticket"]


@dataclass(slots=True)
class Ticket:
    """An admitted request. ``ask`` is what the state store was asked (with the key's
    terms); ``cap`` is the completion cap to forward as ``options.num_predict``
    (``None``: leave the request as it is)."""

    ask: Ask
    policy: KeyPolicy
    cap: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    counted: bool = False  # the state store holds something of it to settle
    reserved: int = 0  # tokens held for it until settlement
    admitted_ms: int = 0  # wall clock, for a store that lost the reservation meanwhile


class Admission(Protocol):
    @property
    def journals(self) -> bool:
        """Whether settle() wants the finished audit row."""
        ...

    async def admit(self, policy: KeyPolicy, ask: Ask, journal: bytes = b"") -> Ticket:
        """Admit or refuse (``LimitExceeded``, ``BudgetExhausted``, ``GatewayUnavailable``).
        ``journal`` is the audit row as admission knows it (kept by journaling stores)."""
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
