"""The JSON objects of chat and generate answers, as Ollama lays them out.

Token frames are the hot path (one per token per stream), so they are assembled from
pre-encoded pieces instead of building and dumping a dict each time. Key order follows
Ollama's Go structs; zero metrics are left out (`omitempty`). When the request asked
for `logprobs`, each content frame carries its token's, and a whole answer all of them
(`nz_mock_ollama.logprobs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from nz_mock_ollama import gojson
from nz_mock_ollama.logprobs import token_logprobs
from nz_mock_ollama.replies import Reply
from nz_mock_ollama.timestamps import utc_now

__all__ = ["ChatFrames", "GenerateFrames", "Metrics", "context_ids"]


@lru_cache(maxsize=16384)
def _encoded(token: str) -> str:
    return gojson.dumps(token)


@dataclass(frozen=True, slots=True)
class Metrics:
    """The final frame's counters; durations in nanoseconds."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int

    def as_fields(self) -> dict[str, int]:
        """Non-zero metrics, in Ollama's order."""
        fields = {
            "total_duration": self.total_duration,
            "load_duration": self.load_duration,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_duration,
        }
        return {k: v for k, v in fields.items() if v}


def context_ids(seed: int, count: int) -> list[int]:
    """Fake token ids for generate's `context` (prompt plus answer)."""
    return [(seed + i * 2_654_435_761) % 128_256 for i in range(count)]


def _logprobs_field(token: str, top: int | None) -> str:
    """`,"logprobs":[…]` for one token frame, or nothing when they were not asked for."""
    if top is None:
        return ""
    return ',"logprobs":' + gojson.dumps([token_logprobs(token, top)])


def _all_logprobs(reply: Reply, top: int | None) -> dict[str, Any]:
    if top is None or not reply.content:
        return {}
    return {"logprobs": [token_logprobs(token, top) for token in reply.content]}


class ChatFrames:
    """`/api/chat` frames for one request; `model` is echoed exactly as it was sent;
    `logprobs` is how many alternatives each token lists (None: not asked)."""

    __slots__ = ("_head", "_logprobs", "_model")

    def __init__(self, model: str, *, logprobs: int | None = None) -> None:
        self._model = model
        self._head = '{"model":' + gojson.dumps(model) + ',"created_at":"'
        self._logprobs = logprobs

    def content(self, token: str) -> bytes:
        """A content token frame."""
        return (
            f'{self._head}{utc_now()}","message":{{"role":"assistant","content":'
            f'{_encoded(token)}}},"done":false{_logprobs_field(token, self._logprobs)}}}\n'
        ).encode()

    def thinking(self, token: str) -> bytes:
        """A thinking token frame (`message.thinking`, empty content)."""
        return (
            f'{self._head}{utc_now()}","message":{{"role":"assistant","content":"",'
            f'"thinking":{_encoded(token)}}},"done":false}}\n'
        ).encode()

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        """The frame that carries the tool calls whole."""
        message = {"role": "assistant", "content": "", "tool_calls": calls}
        frame = {"model": self._model, "created_at": utc_now(), "message": message, "done": False}
        return gojson.dumps_bytes(frame) + b"\n"

    def final(self, reply: Reply, metrics: Metrics, *, whole: bool) -> dict[str, Any]:
        """The done frame; `whole` (non-streamed) carries the full text and tool calls."""
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if whole:
            message["content"] = "".join(reply.content)
            if reply.thinking:
                message["thinking"] = "".join(reply.thinking)
            if reply.tool_calls:
                message["tool_calls"] = reply.tool_calls
        return {
            "model": self._model,
            "created_at": utc_now(),
            "message": message,
            "done_reason": reply.done_reason,
            "done": True,
            **(_all_logprobs(reply, self._logprobs) if whole else {}),
            **metrics.as_fields(),
        }

    def special(self, done_reason: str) -> dict[str, Any]:
        """The single object for an empty `messages` (`load`, or `unload` with keep_alive 0)."""
        return {
            "model": self._model,
            "created_at": utc_now(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": done_reason,
            "done": True,
        }


class GenerateFrames:
    """`/api/generate` frames for one request (`logprobs` as for :class:`ChatFrames`)."""

    __slots__ = ("_head", "_logprobs", "_model")

    def __init__(self, model: str, *, logprobs: int | None = None) -> None:
        self._model = model
        self._head = '{"model":' + gojson.dumps(model) + ',"created_at":"'
        self._logprobs = logprobs

    def content(self, token: str) -> bytes:
        """A response token frame."""
        return (
            f'{self._head}{utc_now()}","response":{_encoded(token)},"done":false'
            f"{_logprobs_field(token, self._logprobs)}}}\n"
        ).encode()

    def thinking(self, token: str) -> bytes:
        """A thinking token frame (empty `response`)."""
        return (
            f'{self._head}{utc_now()}","response":"","thinking":{_encoded(token)},"done":false}}\n'
        ).encode()

    def final(
        self, reply: Reply, metrics: Metrics, *, whole: bool, context: list[int] | None
    ) -> dict[str, Any]:
        """The done frame; `context` is left out for raw prompts."""
        frame: dict[str, Any] = {
            "model": self._model,
            "created_at": utc_now(),
            "response": "".join(reply.content) if whole else "",
        }
        if whole and reply.thinking:
            frame["thinking"] = "".join(reply.thinking)
        frame["done"] = True
        frame["done_reason"] = reply.done_reason
        if context is not None:
            frame["context"] = context
        frame.update(metrics.as_fields())
        if whole:
            frame.update(_all_logprobs(reply, self._logprobs))
        return frame

    def special(self, done_reason: str) -> dict[str, Any]:
        """The single object for an empty prompt (`load`, or `unload` with keep_alive 0)."""
        return {
            "model": self._model,
            "created_at": utc_now(),
            "response": "",
            "done": True,
            "done_reason": done_reason,
        }
