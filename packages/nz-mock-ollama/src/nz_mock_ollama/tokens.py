"""Prompt token counts that look like a real tokenizer's: about four characters a token.

The numbers matter to the gateway's accounting tests, so the rule is simple to restate:
- text: ceil(len(text) / 4), 0 for empty text;
- chat: 1 (BOS) + for each message 4 (role header and end-of-turn) + its content,
  thinking and tool calls, + the tools' JSON when tools are offered;
- generate: 1 + 4 (template) + prompt + system (+4 when present) + len(context);
  raw prompts skip the template: just the prompt's tokens;
- embed: each input's tokens + 2 ([CLS] and [SEP]).
Every count is at least 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nz_mock_ollama import gojson

__all__ = ["chat_prompt_tokens", "embed_input_tokens", "generate_prompt_tokens", "text_tokens"]

MESSAGE_OVERHEAD = 4


def text_tokens(text: str) -> int:
    """Tokens in a piece of text: ceil(chars / 4)."""
    return (len(text) + 3) // 4


def _message_tokens(message: dict[str, Any]) -> int:
    count = MESSAGE_OVERHEAD
    for key in ("content", "thinking"):
        value = message.get(key)
        if isinstance(value, str):
            count += text_tokens(value)
    if message.get("tool_calls"):
        count += text_tokens(gojson.dumps(message["tool_calls"]))
    return count


def chat_prompt_tokens(messages: Sequence[dict[str, Any]], tools: Sequence[Any]) -> int:
    """`prompt_eval_count` for a chat request."""
    count = 1 + sum(_message_tokens(m) for m in messages)
    if tools:
        count += text_tokens(gojson.dumps(list(tools)))
    return max(1, count)


def generate_prompt_tokens(prompt: str, system: str, *, raw: bool, context: int) -> int:
    """`prompt_eval_count` for a generate request."""
    if raw:
        return max(1, text_tokens(prompt) + context)
    count = 1 + MESSAGE_OVERHEAD + text_tokens(prompt) + context
    if system:
        count += MESSAGE_OVERHEAD + text_tokens(system)
    return max(1, count)


def embed_input_tokens(text: str) -> int:
    """Tokens one embedding input costs."""
    return text_tokens(text) + 2
