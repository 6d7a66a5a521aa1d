"""`POST /api/chat` and `POST /api/generate`: streamed NDJSON or one JSON object.

Each handler reads top to bottom: parse, check the model, plan the reply (`replies`), then
either stream it frame by frame or wait the generation time and answer at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from aiohttp import web

from nz_mock_ollama import gojson
from nz_mock_ollama.bodies import ANY, BOOL, INT, OBJECT, STRING, Field, json_kind, read_body
from nz_mock_ollama.catalogue import ModelEntry
from nz_mock_ollama.errors import OllamaError, json_response
from nz_mock_ollama.frames import ChatFrames, GenerateFrames, Metrics, context_ids
from nz_mock_ollama.generation import seed_of
from nz_mock_ollama.ndjson import ARRIVED, NdjsonStream
from nz_mock_ollama.params import Params, parse_params
from nz_mock_ollama.replies import Reply, plan_reply
from nz_mock_ollama.state import STATE, MockState
from nz_mock_ollama.tokens import chat_prompt_tokens, generate_prompt_tokens

__all__ = ["chat", "generate"]

_COMMON: dict[str, Field] = {
    "model": STRING,
    "stream": BOOL,
    "format": ANY,
    "options": OBJECT,
    "keep_alive": ANY,
    "think": ANY,
    "truncate": BOOL,
    "shift": BOOL,
    "logprobs": BOOL,
    "top_logprobs": INT,
}
CHAT_FIELDS = {
    **_COMMON,
    "messages": Field("array", "[]api.Message"),
    "tools": Field("array", "api.Tools"),
}
GENERATE_FIELDS = {
    **_COMMON,
    "prompt": STRING,
    "suffix": STRING,
    "system": STRING,
    "template": STRING,
    "raw": BOOL,
    "context": Field("array", "[]int"),
    "images": Field("array", "[]api.ImageData"),
}
# Simulated prompt processing speed: 50k tokens/s.
_PROMPT_EVAL_NS_PER_TOKEN = 20_000


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages") or []
    for message in messages:
        if not isinstance(message, dict):
            raise OllamaError(
                400,
                f"json: cannot unmarshal {json_kind(message)} into Go struct field "
                "ChatRequest.messages of type api.Message",
            )
        for key in ("role", "content"):
            value = message.get(key)
            if value is not None and not isinstance(value, str):
                raise OllamaError(
                    400,
                    f"json: cannot unmarshal {json_kind(value)} into Go struct field "
                    f"ChatRequest.messages.{key} of type string",
                )
    return messages


def _metrics(
    arrived: float, started: float, first_frame: float, prompt_tokens: int, reply: Reply
) -> Metrics:
    now = time.monotonic()
    load_ns = max(1_000, int((started - arrived) * 1e9))
    prompt_ns = prompt_tokens * _PROMPT_EVAL_NS_PER_TOKEN
    eval_ns = max(1_000, int((now - first_frame) * 1e9))
    total_ns = max(int((now - arrived) * 1e9) + prompt_ns, load_ns + prompt_ns + eval_ns)
    return Metrics(total_ns, load_ns, prompt_tokens, prompt_ns, reply.eval_count, eval_ns)


async def _stream(
    request: web.Request,
    state: MockState,
    reply: Reply,
    content: Callable[[str], bytes],
    thinking: Callable[[str], bytes],
    tool_frame: Callable[[], bytes] | None,
    final: Callable[[float], dict[str, Any]],
) -> web.StreamResponse:
    async with NdjsonStream(request, state) as stream:
        first = time.monotonic()
        for token in reply.thinking:
            if not await stream.send(partial(thinking, token)):
                return stream.response
        if tool_frame is not None and not await stream.send(tool_frame):
            return stream.response
        for token in reply.content:
            if not await stream.send(partial(content, token)):
                return stream.response
        await stream.send(lambda: gojson.dumps_bytes(final(first)) + b"\n")
    return stream.response


async def _generation_time(state: MockState, reply: Reply) -> None:
    # A non-streamed answer still takes as long as its tokens would at the token rate.
    if state.frame_interval and reply.eval_count:
        await asyncio.sleep(state.frame_interval * reply.eval_count)


def _model(state: MockState, body: dict[str, Any], *, chat: bool) -> tuple[str, ModelEntry]:
    name = body.get("model") or ""
    if not name and chat:
        raise OllamaError(400, "model is required")
    entry = state.catalogue.get(name) if name else None
    if entry is None:
        raise OllamaError(404, f"model '{name}' not found")
    if entry.embedding:
        raise OllamaError(400, f'"{name}" does not support {"chat" if chat else "generate"}')
    return name, entry


def _plan(state: MockState, params: Params, seed: int, tool: object | None) -> Reply:
    return plan_reply(
        corpus=state.corpus,
        seed=seed,
        length=state.response_tokens,
        think=params.think,
        fmt=params.fmt,
        tool=tool,
        num_predict=params.num_predict,
        stops=params.stops,
    )


async def chat(request: web.Request) -> web.StreamResponse:
    """`POST /api/chat`."""
    state = request.app[STATE]
    body = await read_body(request, "ChatRequest", CHAT_FIELDS)
    name, entry = _model(state, body, chat=True)
    params = parse_params(body, entry, name)
    messages = _messages(body)
    state.residency.touch(entry, params.keep_alive_s, time.time(), params.num_ctx)
    frames = ChatFrames(name)
    if not messages:
        return json_response(frames.special("unload" if params.keep_alive_s == 0 else "load"))

    tools = body.get("tools") or []
    last_role = str(messages[-1].get("role") or "").lower()
    # ollama-python always sends "tools": [], which must not turn into a tool call.
    tool = tools[0] if tools and last_role == "user" else None
    seed = seed_of(entry.name, params.seed, *(str(m.get("content") or "") for m in messages))
    reply = _plan(state, params, seed, tool)
    prompt_tokens = chat_prompt_tokens(messages, tools)
    arrived = request.get(ARRIVED, time.monotonic())
    started = time.monotonic()

    def final(first_frame: float, *, whole: bool = False) -> dict[str, Any]:
        metrics = _metrics(arrived, started, first_frame, prompt_tokens, reply)
        return frames.final(reply, metrics, whole=whole)

    if body.get("stream") is False:
        await _generation_time(state, reply)
        return json_response(final(started, whole=True))
    tool_frame = (lambda: frames.tool_calls(reply.tool_calls)) if reply.tool_calls else None
    return await _stream(request, state, reply, frames.content, frames.thinking, tool_frame, final)


async def generate(request: web.Request) -> web.StreamResponse:
    """`POST /api/generate`."""
    state = request.app[STATE]
    body = await read_body(request, "GenerateRequest", GENERATE_FIELDS)
    name, entry = _model(state, body, chat=False)
    params = parse_params(body, entry, name)
    raw = body.get("raw") is True
    system = body.get("system") or ""
    context = body.get("context") or []
    if raw and (body.get("template") or system or context):
        raise OllamaError(400, "raw mode does not support template, system, or context")
    state.residency.touch(entry, params.keep_alive_s, time.time(), params.num_ctx)
    frames = GenerateFrames(name)
    prompt = body.get("prompt") or ""
    if not prompt:
        return json_response(frames.special("unload" if params.keep_alive_s == 0 else "load"))

    seed = seed_of(entry.name, params.seed, system, prompt)
    reply = _plan(state, params, seed, None)
    prompt_tokens = generate_prompt_tokens(prompt, system, raw=raw, context=len(context))
    arrived = request.get(ARRIVED, time.monotonic())
    started = time.monotonic()

    def final(first_frame: float, *, whole: bool = False) -> dict[str, Any]:
        metrics = _metrics(arrived, started, first_frame, prompt_tokens, reply)
        ids = None if raw else context_ids(seed, prompt_tokens + reply.eval_count)
        return frames.final(reply, metrics, whole=whole, context=ids)

    if body.get("stream") is False:
        await _generation_time(state, reply)
        return json_response(final(started, whole=True))
    return await _stream(request, state, reply, frames.content, frames.thinking, None, final)
