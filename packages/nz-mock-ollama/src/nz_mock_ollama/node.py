"""How the mock behaves as one Ollama node: slots, the loaded-model cap, cold-load delays.

A frozen value, like `FaultSpec`: the CLI builds it, `POST /_mock/node` replaces it and
`/_mock/reset` restores the startup one. The defaults (0 = no limit, no delay) are the
mock as it always was, so tests that never mention nodes see no queueing, no eviction
and instant loads. Ollama's own defaults (`OLLAMA_NUM_PARALLEL=1`, three loaded models
per GPU) are one flag away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nz_mock_ollama.catalogue import ModelEntry, lookup_key, with_default_tag

__all__ = ["NodeSettings", "parse_load_delay", "update_node"]


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """`parallel` is `OLLAMA_NUM_PARALLEL` (requests generating at once per loaded model),
    `max_loaded_models` is `OLLAMA_MAX_LOADED_MODELS`; 0 means unlimited for both.
    `load_delay_s` is every model's cold load, `load_delays` overrides it per model
    (keyed as the catalogue keys names)."""

    parallel: int = 0
    max_loaded_models: int = 0
    load_delay_s: float = 0.0
    load_delays: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.parallel < 0:
            raise ValueError("parallel must be >= 0")
        if self.max_loaded_models < 0:
            raise ValueError("max_loaded_models must be >= 0")
        if self.load_delay_s < 0 or any(s < 0 for s in self.load_delays.values()):
            raise ValueError("load delays must be >= 0")
        keyed = {lookup_key(name): float(s) for name, s in self.load_delays.items()}
        object.__setattr__(self, "load_delays", keyed)

    def load_delay(self, entry: ModelEntry) -> float:
        """Seconds a cold load of `entry` takes."""
        return self.load_delays.get(lookup_key(entry.name), self.load_delay_s)

    def slots(self, entry: ModelEntry) -> int:
        """Slots of a runner for `entry` (0: unlimited). Ollama loads embedding models
        with one slot whatever `OLLAMA_NUM_PARALLEL` says."""
        return 1 if self.parallel and entry.embedding else self.parallel

    def as_json(self) -> dict[str, Any]:
        """The `/_mock/node` body."""
        return {
            "parallel": self.parallel,
            "max_loaded_models": self.max_loaded_models,
            "load_delay_s": self.load_delay_s,
            "load_delays": dict(sorted(self.load_delays.items())),
        }


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0")
    return value


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 3600:
        raise ValueError(f"{name} must be a number of seconds in [0, 3600)")
    return float(value)


def update_node(current: NodeSettings, changes: Mapping[str, object]) -> NodeSettings:
    """Apply a `POST /_mock/node` body: absent keys keep their value; `load_delays` is
    merged into the current map (a delay of 0 makes that model load instantly).

    Raises ValueError with a message meant for the caller on an unknown key or a bad value.
    """
    unknown = sorted(set(changes) - set(NodeSettings.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown node keys: {', '.join(unknown)}")
    fields: dict[str, Any] = {}
    for key, value in changes.items():
        match key:
            case "parallel" | "max_loaded_models":
                fields[key] = _count(key, value)
            case "load_delay_s":
                fields[key] = _seconds(key, value)
            case "load_delays":
                if not isinstance(value, Mapping) or not all(
                    isinstance(name, str) and name.strip() for name in value
                ):
                    raise ValueError("load_delays must map model names to seconds")
                merged = dict(current.load_delays)
                for name, seconds in value.items():
                    merged[lookup_key(name)] = _seconds(f"load_delays[{name!r}]", seconds)
                fields[key] = merged
    return replace(current, **fields)


def parse_load_delay(text: str) -> tuple[str | None, float]:
    """A `--load-delay` value: `MODEL=SECONDS`, or `SECONDS` for every model."""
    name, _, seconds = text.rpartition("=")
    try:
        value = float(seconds)
    except ValueError:
        raise ValueError(f"load delay {text!r} is not MODEL=SECONDS or SECONDS") from None
    if not 0 <= value < 3600:
        raise ValueError(f"load delay {text!r} must be in [0, 3600) seconds")
    if not name:
        if "=" in text:
            raise ValueError(f"load delay {text!r} names no model")
        return None, value
    return with_default_tag(name), value
