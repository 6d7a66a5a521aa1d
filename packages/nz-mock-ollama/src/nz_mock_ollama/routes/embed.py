"""`POST /api/embed` and the legacy `POST /api/embeddings`.

Real Ollama embeds with chat models too, so any installed model is accepted; the vector
size is the model's embedding length. Embedding loads the model and takes a slot like
generating does (see `scheduler`).
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import web

from nz_mock_ollama import gojson
from nz_mock_ollama.bodies import ANY, BOOL, INT, OBJECT, STRING, read_body
from nz_mock_ollama.catalogue import ModelEntry
from nz_mock_ollama.embeddings import vector_json
from nz_mock_ollama.errors import OllamaError, json_response
from nz_mock_ollama.keep_alive import session_seconds
from nz_mock_ollama.ndjson import ARRIVED
from nz_mock_ollama.params import num_ctx_option
from nz_mock_ollama.residency import Runner
from nz_mock_ollama.state import STATE, MockState
from nz_mock_ollama.tokens import embed_input_tokens

__all__ = ["embed", "embeddings"]

EMBED_FIELDS = {
    "model": STRING,
    "input": ANY,
    "truncate": BOOL,
    "dimensions": INT,
    "options": OBJECT,
    "keep_alive": ANY,
}
EMBEDDINGS_FIELDS = {"model": STRING, "prompt": STRING, "options": OBJECT, "keep_alive": ANY}


def _entry(state: MockState, name: str) -> ModelEntry:
    entry = state.catalogue.get(name) if name else None
    if entry is None:
        raise OllamaError(404, f'model "{name}" not found, try pulling it first')
    return entry


def _hold(
    state: MockState, entry: ModelEntry, body: dict[str, Any]
) -> AbstractAsyncContextManager[Runner]:
    try:
        keep_alive = session_seconds(body.get("keep_alive"))
    except ValueError as exc:
        raise OllamaError(400, str(exc)) from None
    num_ctx = num_ctx_option(body.get("options") or {})
    return state.scheduler.hold(entry, num_ctx, keep_alive)


def _inputs(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise OllamaError(400, "invalid input type")


async def embed(request: web.Request) -> web.Response:
    """`POST /api/embed`: `{"model", "embeddings": [[…]], durations, prompt_eval_count}`."""
    state = request.app[STATE]
    body = await read_body(request, "EmbedRequest", EMBED_FIELDS)
    name = body.get("model") or ""
    entry = _entry(state, name)
    inputs = _inputs(body.get("input"))
    async with _hold(state, entry, body) as runner:
        loaded = time.monotonic()
        if not inputs:
            return json_response({"model": name, "embeddings": []})

        full = entry.embedding_length
        dimensions = body.get("dimensions") or full
        if dimensions < 0 or dimensions > full:
            raise OllamaError(400, f"dimensions must be between 0 and {full}")
        tokens = [embed_input_tokens(text) for text in inputs]
        if body.get("truncate") is False and max(tokens) > entry.context_length:
            raise OllamaError(400, "input exceeds maximum context length")
        async with state.scheduler.generating(runner):
            vectors = ",".join(vector_json(entry.name, text, full, dimensions) for text in inputs)
    arrived = request.get(ARRIVED, time.monotonic())
    total_ns = max(1_000, int((time.monotonic() - arrived) * 1e9))
    load_ns = max(1, min(total_ns, int((loaded - arrived) * 1e9)))
    # The vectors are cached JSON text; splice them in rather than re-encoding floats.
    data = (
        f'{{"model":{gojson.dumps(name)},"embeddings":[{vectors}],'
        f'"total_duration":{total_ns},"load_duration":{load_ns},'
        f'"prompt_eval_count":{sum(tokens)}}}'
    )
    return json_response(data.encode())


async def embeddings(request: web.Request) -> web.Response:
    """Legacy `POST /api/embeddings`: `{"embedding": […]}` for one `prompt`."""
    state = request.app[STATE]
    body = await read_body(request, "EmbeddingRequest", EMBEDDINGS_FIELDS)
    entry = _entry(state, body.get("model") or "")
    async with _hold(state, entry, body) as runner:
        prompt = body.get("prompt") or ""
        if not prompt:
            return json_response({"embedding": []})
        full = entry.embedding_length
        async with state.scheduler.generating(runner):
            vector = vector_json(entry.name, prompt, full, full)
    return json_response(f'{{"embedding":{vector}}}'.encode())
