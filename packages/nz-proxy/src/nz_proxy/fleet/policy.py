"""The residency policy applied to what goes to a node (SPEC §4.12).

GPU memory is shared, so a tenant may not decide alone how long a model stays loaded
or at which context size: ``keep_alive`` is clamped to [``KEEP_ALIVE_MIN_S``,
``KEEP_ALIVE_MAX_S``] (forever becomes the maximum), an unload (``keep_alive: 0``)
needs the ``residency`` scope, which lifts the clamp too; ``options.num_ctx`` is the
model's pinned size when a policy pins one (clients that vary it would force reloads),
else the client's, capped at the model's context length.
"""

from __future__ import annotations

from typing import Any

from nz_core.residency import clamp_keep_alive, effective_num_ctx, keep_alive_seconds
from nz_core.scopes import Scope
from nz_proxy.errors import ScopeMissing

__all__ = ["apply_keep_alive", "apply_num_ctx", "requested_num_ctx"]


def apply_keep_alive(
    body: dict[str, Any], scopes: frozenset[Scope], bounds: tuple[float, float]
) -> None:
    """Clamp ``body``'s ``keep_alive`` in place (validated already: Go reads it).

    Raises:
        ScopeMissing: an unload by a key without the ``residency`` scope.
    """
    value = body.get("keep_alive")
    if value is None or isinstance(value, bool):
        return
    seconds = keep_alive_seconds(value)
    if Scope.RESIDENCY in scopes:
        return
    if seconds == 0:
        raise ScopeMissing(Scope.RESIDENCY.value)
    clamped = clamp_keep_alive(seconds, *bounds)
    if clamped != seconds:
        # Seconds as a number: what Ollama's KeepAlive reads as a plain duration.
        body["keep_alive"] = int(clamped) if clamped == int(clamped) else clamped


def requested_num_ctx(body: dict[str, Any]) -> int | None:
    options = body.get("options")
    value = options.get("num_ctx") if isinstance(options, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def apply_num_ctx(
    body: dict[str, Any], pinned: int | None, context_length: int | None
) -> int | None:
    """Set ``body``'s ``options.num_ctx`` by the policy; returns the size the request
    needs loaded (None: whatever is loaded will do)."""
    requested = requested_num_ctx(body)
    num_ctx = effective_num_ctx(requested, pinned, context_length)
    if num_ctx is not None and num_ctx != requested:
        options = body.get("options")
        if not isinstance(options, dict):
            options = body["options"] = {}
        options["num_ctx"] = num_ctx
    return num_ctx
