"""What a chat or generate request is answered with, decided before anything is written.

The functional core of inference: it takes the request's parsed knobs and returns a
`Reply` (the thinking tokens, content tokens or tool calls, and why it stopped). The
handlers only turn a Reply into frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nz_mock_ollama import gojson
from nz_mock_ollama.generation import Corpus, apply_stop
from nz_mock_ollama.structured import json_answer, split_json_text, tool_call
from nz_mock_ollama.tokens import text_tokens

__all__ = ["Reply", "plan_reply"]

# Thinking and answer text come from different places in the corpus.
_THINKING_SALT = 0x9E3779B97F4A7C15


@dataclass(frozen=True, slots=True)
class Reply:
    """A planned answer. Each thinking or content token is one streamed frame."""

    thinking: list[str]
    content: list[str]
    done_reason: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def eval_count(self) -> int:
        """Generated tokens: thinking + content frames, or the tool call's JSON size."""
        if self.tool_calls:
            return len(self.thinking) + text_tokens(gojson.dumps(self.tool_calls))
        return len(self.thinking) + len(self.content)


def plan_reply(
    *,
    corpus: Corpus,
    seed: int,
    length: int,
    think: bool,
    fmt: str | Mapping[str, Any] | None,
    tool: object | None,
    num_predict: int | None,
    stops: Sequence[str],
) -> Reply:
    """Plan the answer.

    `length` is the natural answer length in tokens; `num_predict` (when > 0) caps thinking
    plus content together, and `done_reason` is `length` only when the cap actually cut
    something. A `tool` (the first offered tool, when the last message is the user's) turns
    the answer into one tool call and ignores the cap, as a model emits a call whole.
    """
    thinking = corpus.answer(seed ^ _THINKING_SALT, max(4, length // 2)) if think else []
    if tool is not None:
        return Reply(thinking, [], "stop", [tool_call(tool, corpus, seed)])
    if fmt is not None:
        content = split_json_text(json_answer(fmt, corpus, seed))
    else:
        content = corpus.answer(seed, length)
    content, _ = apply_stop(content, stops)
    natural = len(thinking) + len(content)
    if num_predict is not None and 0 < num_predict < natural:
        kept_thinking = thinking[:num_predict]
        kept_content = content[: num_predict - len(kept_thinking)]
        return Reply(kept_thinking, kept_content, "length")
    return Reply(thinking, content, "stop")
