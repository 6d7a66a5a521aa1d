"""The test control API under `/_mock/` (not part of Ollama; never counted or faulted).

- `GET /_mock/stats` → request counts per path, stream counters, disconnect records.
- `POST /_mock/reset` → counters, received bodies, faults, models and generation knobs
  back to startup.
- `GET /_mock/requests[?after=seq]` → the raw bodies of the last 1,000 Ollama-path
  requests, oldest first: `{"requests": [{"seq", "method", "path", "size", "body"}],
  "recorded", "capacity"}`, `body` base64 (null when no handler reads it, unknown
  routes and blob uploads, or over 1 MiB); `after` keeps only entries with a larger
  `seq` (seq counts since startup).
- `GET|POST /_mock/faults` → read or change the faults (a partial update).
- `POST /_mock/models` → replace (default) or extend the installed models.
- `GET|POST /_mock/config` → read or change `token_rate` and `response_tokens`.
- `GET|POST /_mock/node` → read or change how the mock behaves as an Ollama node:
  `parallel`, `max_loaded_models`, `load_delay_s`, `load_delays` (a partial update;
  `load_delays` is merged). A change applies to models loaded after it, as a restarted
  Ollama would; `reset` restores the startup values and unloads every model.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from nz_mock_ollama.bodies import parse_body
from nz_mock_ollama.catalogue import model_from_name
from nz_mock_ollama.errors import OllamaError, json_response
from nz_mock_ollama.faults import update_faults
from nz_mock_ollama.node import update_node
from nz_mock_ollama.state import STATE, MockState

__all__ = ["config", "faults", "models", "node", "requests", "reset", "stats"]


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    return parse_body(raw, "MockControl") if raw.strip() else {}


def _faults_json(state: MockState) -> dict[str, Any]:
    return {
        "faults": state.faults.as_json(),
        "refusing_connections_until": state.refusing_until if state.refusing() else None,
    }


def _config_json(state: MockState) -> dict[str, Any]:
    return {"token_rate": state.token_rate, "response_tokens": state.response_tokens}


async def stats(request: web.Request) -> web.Response:
    """`GET /_mock/stats`."""
    state = request.app[STATE]
    state.scheduler.settle()
    return json_response({**state.stats.as_json(), **_faults_json(state)})


async def reset(request: web.Request) -> web.Response:
    """`POST /_mock/reset`: answers with the fresh stats."""
    state = request.app[STATE]
    state.reset()
    return json_response({**state.stats.as_json(), **_faults_json(state)})


async def requests(request: web.Request) -> web.Response:
    """`GET /_mock/requests[?after=seq]`: the bodies as received (SPEC §4.9's differential)."""
    after = request.query.get("after", "0")
    try:
        mark = int(after)
    except ValueError:
        raise OllamaError(400, "after must be an integer") from None
    return json_response(request.app[STATE].received.as_json(mark))


async def faults(request: web.Request) -> web.Response:
    """`GET|POST /_mock/faults`; `refuse_connections_s` stops listening for that long."""
    state = request.app[STATE]
    if request.method == "POST":
        changes = await _body(request)
        refuse = changes.pop("refuse_connections_s", None)
        try:
            new_faults = update_faults(state.faults, changes)
        except ValueError as exc:
            raise OllamaError(400, str(exc)) from None
        if refuse is not None and (
            isinstance(refuse, bool) or not isinstance(refuse, int | float) or refuse < 0
        ):
            raise OllamaError(400, "refuse_connections_s must be a number >= 0")
        refuser = state.refuse_connections
        if refuse and refuser is None:
            raise OllamaError(400, "refusing connections needs the mock's own server")
        state.faults = new_faults
        if refuse and refuser is not None:
            await refuser(float(refuse))
    return json_response(_faults_json(state))


async def models(request: web.Request) -> web.Response:
    """`POST /_mock/models` `{"models": [names], "replace": true}` → the new `/api/tags`."""
    state = request.app[STATE]
    body = await _body(request)
    names = body.get("models")
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise OllamaError(400, "models must be a list of non-empty model names")
    # Later names are "older", so a replaced list keeps the caller's order in /api/tags.
    now = time.time_ns()
    entries = [model_from_name(n, now - i * 1_000_000_000) for i, n in enumerate(names)]
    if body.get("replace", True):
        state.catalogue.replace_all(entries)
    else:
        for entry in entries:
            state.catalogue.add(entry)
    return json_response(state.catalogue.tags_body())


async def config(request: web.Request) -> web.Response:
    """`GET|POST /_mock/config`: the generation knobs (`reset` restores the CLI's values)."""
    state = request.app[STATE]
    if request.method == "POST":
        body = await _body(request)
        unknown = sorted(set(body) - {"token_rate", "response_tokens"})
        if unknown:
            raise OllamaError(400, f"unknown config keys: {', '.join(unknown)}")
        rate = body.get("token_rate", state.token_rate)
        length = body.get("response_tokens", state.response_tokens)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
            raise OllamaError(400, "token_rate must be a number >= 0")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise OllamaError(400, "response_tokens must be an integer >= 1")
        state.token_rate, state.response_tokens = float(rate), length
    return json_response(_config_json(state))


async def node(request: web.Request) -> web.Response:
    """`GET|POST /_mock/node`: the node's slots, loaded-model cap and load delays."""
    scheduler = request.app[STATE].scheduler
    if request.method == "POST":
        try:
            scheduler.settings = update_node(scheduler.settings, await _body(request))
        except ValueError as exc:
            raise OllamaError(400, str(exc)) from None
    return json_response(scheduler.settings.as_json())
