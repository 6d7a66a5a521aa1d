"""LiteLLM as a client of the gateway, through both of its routes to it: the OpenAI
surface (``openai/<model>`` with ``api_base=<gateway>/v1``) and Ollama's native one
(``ollama_chat/<model>`` with ``api_base=<gateway>``).

Run by tests/e2e/test_foreign_clients.py with the interpreter of LiteLLM's own
environment (tests/e2e/foreign.py), never the project's: it reads the gateway's URL
and keys as JSON on stdin and prints, as one JSON line, what LiteLLM returned and
raised.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import litellm

CHAT = "llama3.2"
EMBED = "all-minilm"
HELLO = [{"role": "user", "content": "Say hello"}]


def usage(value: Any) -> dict[str, int]:
    return {
        "prompt_tokens": value.prompt_tokens,
        "completion_tokens": value.completion_tokens,
        "total_tokens": value.total_tokens,
    }


def raised(call: Callable[[], object]) -> dict[str, Any] | None:
    """What ``call`` raised, or None when it returned."""
    try:
        call()
    except Exception as exc:  # every class is reported, and judged by the test
        return {
            "class": type(exc).__name__,
            "module": type(exc).__module__,
            "is": [f"{kind.__module__}.{kind.__name__}" for kind in type(exc).__mro__],
            "status_code": getattr(exc, "status_code", None),
        }
    return None


def chat_on(model: str, base: str) -> Callable[..., Any]:
    """A chat call on one of LiteLLM's routes to the gateway."""

    def chat(key: str, **options: Any) -> Any:
        return litellm.completion(
            model=model, api_base=base, api_key=key, messages=HELLO, max_retries=0, **options
        )

    return chat


def run(config: dict[str, str]) -> dict[str, Any]:
    routes = {
        "openai": chat_on(f"openai/{CHAT}", config["url"] + "/v1"),
        "ollama_chat": chat_on(f"ollama_chat/{CHAT}", config["url"]),
    }
    report: dict[str, Any] = {}
    for name, chat in routes.items():
        whole = chat(config["key"])
        chunks = list(chat(config["key"], stream=True, stream_options={"include_usage": True}))
        streamed_usage = [c.usage for c in chunks if getattr(c, "usage", None)]
        report[name] = {
            "whole": {
                "content": whole.choices[0].message.content,
                "finish_reason": whole.choices[0].finish_reason,
                "usage": usage(whole.usage),
            },
            "streamed": {
                "content": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                "usage": usage(streamed_usage[-1]) if streamed_usage else None,
            },
            "errors": {
                "wrong_key": raised(lambda chat=chat: chat(config["wrong"])),
                "model_not_allowed": raised(lambda chat=chat: chat(config["narrow"])),
            },
        }
    # One request a minute: the first is served, every later one refused, on either route.
    report["limited_first"] = routes["openai"](config["limited"]).choices[0].message.content
    for name, chat in routes.items():
        report[name]["errors"]["rate_limited"] = raised(lambda chat=chat: chat(config["limited"]))
    embedded = litellm.embedding(
        model=f"openai/{EMBED}",
        api_base=config["url"] + "/v1",
        api_key=config["key"],
        input=["a", "b"],
        max_retries=0,
    )
    report["embedding"] = {
        "count": len(embedded.data),
        "dimensions": len(embedded.data[0]["embedding"]),
        "prompt_tokens": embedded.usage.prompt_tokens,
    }
    return report


if __name__ == "__main__":
    litellm.suppress_debug_info = True  # its help banner would go to stdout
    print(json.dumps(run(json.load(sys.stdin))))
