"""Which models are "loaded" and until when: the data behind `/api/ps`.

Inference and embedding requests load their model for `keep_alive` (5 minutes by default);
`keep_alive: 0` unloads it; a negative `keep_alive` keeps it forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nz_mock_ollama.catalogue import ModelEntry, lookup_key
from nz_mock_ollama.timestamps import rfc3339_nano

__all__ = ["Residency"]

# Go prints "forever" as a far-future expiry; the exact year does not matter to clients.
_FOREVER_S = 100 * 365 * 86_400.0


@dataclass(slots=True)
class _Loaded:
    entry: ModelEntry
    expires_at: float
    context_length: int


class Residency:
    """Loaded models keyed like the catalogue."""

    def __init__(self) -> None:
        self._loaded: dict[str, _Loaded] = {}

    def touch(
        self, entry: ModelEntry, keep_alive_s: float | None, now: float, num_ctx: int
    ) -> None:
        """Record a use of `entry`; `keep_alive_s` None means forever, 0 unloads."""
        key = lookup_key(entry.name)
        if keep_alive_s == 0:
            self._loaded.pop(key, None)
            return
        expires = now + (_FOREVER_S if keep_alive_s is None else keep_alive_s)
        self._loaded[key] = _Loaded(entry, expires, num_ctx)

    def forget(self, name: str) -> None:
        """Drop a model that was deleted."""
        self._loaded.pop(lookup_key(name), None)

    def clear(self) -> None:
        """Unload everything."""
        self._loaded.clear()

    def ps(self, now: float, offset_minutes: int) -> dict[str, Any]:
        """The `/api/ps` body: unexpired models, longest remaining first."""
        alive = sorted(
            (m for m in self._loaded.values() if m.expires_at > now),
            key=lambda m: m.expires_at,
            reverse=True,
        )
        models = [
            {
                "name": m.entry.name,
                "model": m.entry.name,
                "size": m.entry.size,
                "digest": m.entry.digest,
                "details": m.entry.details(),
                "expires_at": rfc3339_nano(int(m.expires_at * 1e9), offset_minutes),
                "size_vram": m.entry.size,
                "context_length": m.context_length,
            }
            for m in alive
        ]
        return {"models": models}
