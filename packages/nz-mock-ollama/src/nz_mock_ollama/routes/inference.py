"""`POST /api/chat` and `POST /api/generate`: streamed NDJSON or one JSON object.

Each handler reads top to bottom: parse, check the model, hold its runner (loading it if
need be, `scheduler`), plan the reply (`replies`), take a slot, then either stream it
frame by frame or wait the generation time and answer at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

from aiohttp import web

from nz_mock_ollama import gojson
from nz_mock_ollama.bodies import ANY, BOOL, INT, OBJECT, STRING, Field, json_kind, read_body
from nz_mock_ollama.catalogue import ModelEntry
from nz_mock_ollama.errors import OllamaError, json_response
from nz_mock_ollama.frames import ChatFrames, GenerateFrames, Metrics, context_ids
from nz_mock_ollama.generation import seed_of
from nz_mock_ollama.keep_alive import session_seconds
from nz_mock_ollama.logprobs import requested as requested_logprobs
from nz_mock_ollama.ndjson import ARRIVED, NdjsonStream
from nz_mock_ollama.params import Params, parse_params
from nz_mock_ollama.replies import Reply, plan_reply
from nz_mock_ollama.residency import Runner
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


async def _generation_time(state: MockState, reply: Reply) -> float:
    """Wait as long as the tokens would take at the token rate (a non-streamed answer
    takes that long too); returns when generating began."""
    began = time.monotonic()
    if state.frame_interval and reply.eval_count:
        await asyncio.sleep(state.frame_interval * reply.eval_count)
    return began


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


def _hold(
    state: MockState, entry: ModelEntry, params: Params, body: dict[str, Any]
) -> AbstractAsyncContextManager[Runner]:
    # The time until the runner is held is the answer's load_duration (Ollama's
    # checkpointLoaded); keep_alive was checked by parse_params.
    keep_alive = session_seconds(body.get("keep_alive"))
    return state.scheduler.hold(entry, params.num_ctx, keep_alive)


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
    logprobs = requested_logprobs(body)
    name, entry = _model(state, body, chat=True)
    params = parse_params(body, entry, name)
    messages = _messages(body)
    frames = ChatFrames(name, logprobs=logprobs)
    if not messages and params.keep_alive_s == 0:
        state.scheduler.unload(entry)
        return json_response(frames.special("unload"))

    async with _hold(state, entry, params, body) as runner:
        started = time.monotonic()
        if not messages:
            return json_response(frames.special("load"))
        tools = body.get("tools") or []
        last_role = str(messages[-1].get("role") or "").lower()
        # ollama-python always sends "tools": [], which must not turn into a tool call.
        tool = tools[0] if tools and last_role == "user" else None
        seed = seed_of(entry.name, params.seed, *(str(m.get("content") or "") for m in messages))
        reply = _plan(state, params, seed, tool)
        prompt_tokens = chat_prompt_tokens(messages, tools)
        arrived = request.get(ARRIVED, time.monotonic())

        def final(first_frame: float, *, whole: bool = False) -> dict[str, Any]:
            metrics = _metrics(arrived, started, first_frame, prompt_tokens, reply)
            return frames.final(reply, metrics, whole=whole)

        async with state.scheduler.generating(runner):
            if body.get("stream") is False:
                return json_response(final(await _generation_time(state, reply), whole=True))
            tool_frame = (lambda: frames.tool_calls(reply.tool_calls)) if reply.tool_calls else None
            return await _stream(
                request, state, reply, frames.content, frames.thinking, tool_frame, final
            )


async def generate(request: web.Request) -> web.StreamResponse:
    """`POST /api/generate`."""
    state = request.app[STATE]
    body = await read_body(request, "GenerateRequest", GENERATE_FIELDS)
    logprobs = requested_logprobs(body)
    name, entry = _model(state, body, chat=False)
    params = parse_params(body, entry, name)
    raw = body.get("raw") is True
    system = body.get("system") or ""
    context = body.get("context") or []
    if raw and (body.get("template") or system or context):
        raise OllamaError(400, "raw mode does not support template, system, or context")
    frames = GenerateFrames(name, logprobs=logprobs)
    prompt = body.get("prompt") or ""
    if not prompt and params.keep_alive_s == 0:
        state.scheduler.unload(entry)
        return json_response(frames.special("unload"))

    async with _hold(state, entry, params, body) as runner:
        started = time.monotonic()
        if not prompt:
            return json_response(frames.special("load"))
        seed = seed_of(entry.name, params.seed, system, prompt)
        reply = _plan(state, params, seed, None)
        prompt_tokens = generate_prompt_tokens(prompt, system, raw=raw, context=len(context))
        arrived = request.get(ARRIVED, time.monotonic())

        def final(first_frame: float, *, whole: bool = False) -> dict[str, Any]:
            metrics = _metrics(arrived, started, first_frame, prompt_tokens, reply)
            ids = None if raw else context_ids(seed, prompt_tokens + reply.eval_count)
            return frames.final(reply, metrics, whole=whole, context=ids)

        async with state.scheduler.generating(runner):
            if body.get("stream") is False:
                return json_response(final(await _generation_time(state, reply), whole=True))
            return await _stream(
                request, state, reply, frames.content, frames.thinking, None, final
            )
