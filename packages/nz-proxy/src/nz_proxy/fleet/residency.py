"""What a node has loaded, from its ``GET /api/ps`` (SPEC §4.10).

Ollama lists each loaded model with its ``context_length`` and ``expires_at``; a model
is warm for a request if it is listed, has not expired, and was loaded with the context
size the request needs (Ollama reloads a model whose context size changes; a request
that names none reuses whatever is loaded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nz_core.models import normalize_model

__all__ = ["Resident", "residency_from_ps", "warm"]


@dataclass(frozen=True, slots=True)
class Resident:
    context_length: int | None  # None: the node did not say
    expires_at: float | None  # epoch seconds; None: never (keep_alive < 0) or unknown


def residency_from_ps(body: Mapping[str, Any]) -> dict[str, Resident]:
    """The loaded models by normalised name; entries that do not parse are skipped."""
    found: dict[str, Resident] = {}
    for entry in body.get("models") or []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model") or entry.get("name")
        if not isinstance(name, str) or not name:
            continue
        length = entry.get("context_length")
        found[normalize_model(name)] = Resident(
            context_length=length if isinstance(length, int) and length > 0 else None,
            expires_at=_epoch(entry.get("expires_at")),
        )
    return found


def _epoch(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    # Go's zero time, or a year far ahead: Ollama's way of saying "forever".
    if moment.year < 2000 or moment.year > 2200:
        return None
    return moment.timestamp()


def warm(resident: Resident | None, num_ctx: int | None, now: float) -> bool:
    """Whether a request asking for ``num_ctx`` (None: any) runs without a load."""
    if resident is None:
        return False
    if resident.expires_at is not None and resident.expires_at <= now:
        return False
    return num_ctx is None or resident.context_length in (None, num_ctx)
