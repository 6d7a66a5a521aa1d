"""Injectable faults: a frozen value that the control API replaces, never mutates.

Per-request faults (`fail_next`, `delay_first_byte_s`) and stream faults (`cut_stream_after`,
`error_after`) apply to the Ollama paths listed in `paths`, or to every Ollama path when
`paths` is empty. `/_mock/*` is never faulted. Refusing connections is an action on the
listener, not a stored fault, so it lives in the server and the control API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["Failure", "FaultSpec", "take_failure", "update_faults"]


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """The faults in force. The defaults mean "no fault"."""

    fail_next: int = 0
    fail_status: int = 500
    fail_message: str = "mock: injected failure"
    # Failures as plain text, the way a proxy in front of Ollama answers (a node that is
    # down), rather than Ollama's own `{"error": …}` (a node that refused the request).
    fail_plain: bool = False
    delay_first_byte_s: float = 0.0
    cut_stream_after: int | None = None
    error_after: int | None = None
    error_message: str = "mock: injected stream error"
    paths: tuple[str, ...] = ()

    def applies_to(self, path: str) -> bool:
        """Whether the faults are scoped to include this request path."""
        return not self.paths or path in self.paths

    def as_json(self) -> dict[str, Any]:
        """The shape `/_mock/faults` answers with."""
        data = asdict(self)
        data["paths"] = list(self.paths)
        return data


Failure = tuple[int, str, bool]  # status, message, plain text


def take_failure(spec: FaultSpec, path: str) -> tuple[FaultSpec, Failure | None]:
    """Consume one `fail_next` for this path: the new spec and (status, message, plain),
    if any."""
    if spec.fail_next <= 0 or not spec.applies_to(path):
        return spec, None
    failure = (spec.fail_status, spec.fail_message, spec.fail_plain)
    return replace(spec, fail_next=spec.fail_next - 1), failure


def _int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    # bool is an int in Python, but `"fail_next": true` is a caller's mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} out of range")
    return value


def _optional_int(name: str, value: object) -> int | None:
    return None if value is None else _int(name, value, minimum=0)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number >= 0")
    return float(value)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _paths(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise ValueError("paths must be a string or a list of strings")


def update_faults(current: FaultSpec, changes: Mapping[str, object]) -> FaultSpec:
    """Apply a `/_mock/faults` body (or CLI flags) to the current spec.

    Keys that are absent keep their value; `"clear": true` starts from no faults first.
    Raises ValueError with a message meant for the caller on an unknown key or a bad value.
    """
    known = {*FaultSpec.__dataclass_fields__, "clear"}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown fault keys: {', '.join(unknown)}")
    spec = FaultSpec() if changes.get("clear") is True else current
    fields: dict[str, Any] = {}
    for key, value in changes.items():
        match key:
            case "clear":
                continue
            case "fail_next":
                fields[key] = _int(key, value, minimum=0)
            case "fail_status":
                fields[key] = _int(key, value, minimum=400, maximum=599)
            case "fail_message" | "error_message":
                fields[key] = _text(key, value)
            case "fail_plain":
                if not isinstance(value, bool):
                    raise ValueError("fail_plain must be true or false")
                fields[key] = value
            case "delay_first_byte_s":
                fields[key] = _seconds(key, value)
            case "cut_stream_after" | "error_after":
                fields[key] = _optional_int(key, value)
            case "paths":
                fields[key] = _paths(value)
    return replace(spec, **fields)
