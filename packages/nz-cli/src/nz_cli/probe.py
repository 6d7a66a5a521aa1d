"""Asking Ollama nodes what they hold, for `list-backends` and `list-models`.

Read-only (``GET /api/tags`` and ``GET /api/ps``), every node at once, each with a short
timeout: a node that does not answer is reported, never waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx

from nz_core.backends import Backend
from nz_core.models import normalize_model

__all__ = ["PROBE_TIMEOUT_S", "NodeReport", "Resident", "probe_all"]

# Long enough for a node across a WAN, short enough that a dead one does not stall
# the command; every node is asked at once.
PROBE_TIMEOUT_S: Final = 3.0


@dataclass(frozen=True, slots=True)
class Resident:
    """A model loaded on a node, as its ``/api/ps`` says."""

    model: str
    context_length: int | None
    expires_at: str | None
    size_vram: int | None


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What one node answered: its models and loaded models, or why it did not."""

    models: tuple[str, ...] = ()
    resident: tuple[Resident, ...] = ()
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.error is None


async def probe_all(
    backends: Sequence[Backend], *, residency: bool = True, wait_s: float = PROBE_TIMEOUT_S
) -> list[NodeReport]:
    """One report per backend, in order, each request given ``wait_s``;
    ``residency=False`` skips ``/api/ps``."""
    async with httpx.AsyncClient(timeout=wait_s) as client:
        return list(
            await asyncio.gather(*(_probe(client, backend.url, residency) for backend in backends))
        )


async def _probe(client: httpx.AsyncClient, url: str, residency: bool) -> NodeReport:
    try:
        if residency:
            tags, ps = await asyncio.gather(
                _get(client, url, "/api/tags"), _get(client, url, "/api/ps")
            )
        else:
            tags, ps = await _get(client, url, "/api/tags"), {}
        models = sorted({normalize_model(_name(entry)) for entry in tags.get("models") or []})
        resident = sorted(
            (_resident(entry) for entry in ps.get("models") or []), key=lambda r: r.model
        )
    except httpx.HTTPError as exc:
        return NodeReport(error=_reason(exc))
    except (ValueError, KeyError, TypeError, AttributeError):
        return NodeReport(error="answered something that is not Ollama's JSON")
    return NodeReport(models=tuple(models), resident=tuple(resident))


async def _get(client: httpx.AsyncClient, url: str, path: str) -> dict[str, Any]:
    response = await client.get(url + path)
    response.raise_for_status()
    body = response.json()
    if not isinstance(body, dict):
        raise TypeError(path)
    return body


def _name(entry: dict[str, Any]) -> str:
    name = entry.get("name") or entry["model"]
    if not isinstance(name, str):
        raise TypeError("model name")
    return name


def _resident(entry: dict[str, Any]) -> Resident:
    length = entry.get("context_length")
    vram = entry.get("size_vram")
    expires = entry.get("expires_at")
    return Resident(
        model=normalize_model(_name(entry)),
        context_length=length if isinstance(length, int) else None,
        expires_at=expires if isinstance(expires, str) else None,
        size_vram=vram if isinstance(vram, int) else None,
    )


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"status {exc.response.status_code} from {exc.request.url.path}"
    text = " ".join(str(exc).split())
    return text[:120] or type(exc).__name__
