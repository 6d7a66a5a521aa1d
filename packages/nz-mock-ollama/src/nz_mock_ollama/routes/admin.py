"""Model administration: pull, push, create, copy, delete and blobs.

The gateway must never forward these; the mock implements them (and counts them) so tests
can prove it. They change the mock's model list the way they would change Ollama's, which
also lets discovery tests add a model "out of band".
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from functools import partial

from aiohttp import web

from nz_mock_ollama import gojson
from nz_mock_ollama.bodies import ANY, BOOL, STRING, read_body
from nz_mock_ollama.catalogue import model_from_name
from nz_mock_ollama.errors import OllamaError, json_response
from nz_mock_ollama.ndjson import NdjsonStream
from nz_mock_ollama.state import STATE, MockState

__all__ = ["blob_exists", "blob_upload", "copy", "create", "delete", "pull", "push"]

_PULL_FIELDS = {"model": STRING, "name": STRING, "insecure": BOOL, "stream": BOOL}
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


def _name(body: dict[str, object]) -> str:
    name = body.get("model") or body.get("name") or ""
    if not isinstance(name, str) or not name:
        raise OllamaError(400, "model is required")
    return name


async def _progress(
    request: web.Request,
    state: MockState,
    stream: bool,
    statuses: list[dict[str, object]],
    install: Callable[[], None] | None = None,
) -> web.StreamResponse:
    """Answer with progress lines (NDJSON) or, for `stream: false`, the last status only.

    `install` runs just before the final `success`, where Ollama has written the manifest;
    a stream cut short by a fault or by the client never installs anything.
    """
    if not stream:
        if install is not None:
            install()
        return json_response(statuses[-1])
    async with NdjsonStream(request, state, paced=False) as out:
        for i, status in enumerate(statuses):
            if install is not None and i == len(statuses) - 1:
                install()
            if not await out.send(partial(_line, status)):
                break
    return out.response


def _line(status: dict[str, object]) -> bytes:
    return gojson.dumps_bytes(status) + b"\n"


def _layer(verb: str, digest: str, total: int) -> list[dict[str, object]]:
    # `completed` is omitted while it is 0, as Go's omitempty does.
    label = f"{verb} {digest[:12]}"
    long = f"sha256:{digest}"
    return [
        {"status": label, "digest": long, "total": total},
        {"status": label, "digest": long, "total": total, "completed": total // 2},
        {"status": label, "digest": long, "total": total, "completed": total},
    ]


async def pull(request: web.Request) -> web.StreamResponse:
    """`POST /api/pull`: progress lines, then the model is installed."""
    state = request.app[STATE]
    body = await read_body(request, "PullRequest", _PULL_FIELDS)
    name = _name(body)
    entry = state.catalogue.get(name) or model_from_name(name, time.time_ns())
    statuses: list[dict[str, object]] = [{"status": "pulling manifest"}]
    statuses += _layer("pulling", entry.digest, entry.size)
    statuses += [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    installed = state.catalogue.get(name) is not None
    return await _progress(
        request,
        state,
        body.get("stream") is not False,
        statuses,
        None if installed else lambda: state.catalogue.add(entry),
    )


async def push(request: web.Request) -> web.StreamResponse:
    """`POST /api/push`: progress lines for an installed model."""
    state = request.app[STATE]
    body = await read_body(request, "PushRequest", _PULL_FIELDS)
    name = _name(body)
    entry = state.catalogue.get(name)
    if entry is None:
        raise OllamaError(404, f"model '{name}' not found")
    statuses: list[dict[str, object]] = [{"status": "retrieving manifest"}]
    statuses += [{"status": "starting upload", "digest": f"sha256:{entry.digest}"}]
    statuses += _layer("pushing", entry.digest, entry.size)
    statuses += [{"status": "pushing manifest"}, {"status": "success"}]
    return await _progress(request, state, body.get("stream") is not False, statuses)


async def create(request: web.Request) -> web.StreamResponse:
    """`POST /api/create`: a new model, shaped like `from` when that is installed."""
    state = request.app[STATE]
    body = await read_body(
        request, "CreateRequest", {"model": STRING, "from": STRING, "stream": BOOL, "files": ANY}
    )
    name = _name(body)
    source = body.get("from") or ""
    base = state.catalogue.get(source) if source else None
    if source and base is None:
        raise OllamaError(404, f"model '{source}' not found")
    entry = model_from_name(name, time.time_ns(), like=base)
    statuses: list[dict[str, object]] = [
        {"status": "gathering model components"},
        {"status": f"using existing layer sha256:{base.digest if base else entry.digest}"},
        {"status": f"creating new layer sha256:{hashlib.sha256(name.encode()).hexdigest()}"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    return await _progress(
        request,
        state,
        body.get("stream") is not False,
        statuses,
        lambda: state.catalogue.add(entry),
    )


async def copy(request: web.Request) -> web.Response:
    """`POST /api/copy`: 200 with an empty body, 404 when the source is missing."""
    state = request.app[STATE]
    body = await read_body(request, "CopyRequest", {"source": STRING, "destination": STRING})
    source, destination = body.get("source") or "", body.get("destination") or ""
    if not source or not destination:
        raise OllamaError(400, "source and destination are required")
    entry = state.catalogue.get(source)
    if entry is None:
        raise OllamaError(404, f"model '{source}' not found")
    state.catalogue.add(entry.renamed(destination, time.time_ns()))
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    """`DELETE /api/delete`: 200 with an empty body, 404 when missing."""
    state = request.app[STATE]
    body = await read_body(request, "DeleteRequest", {"model": STRING, "name": STRING})
    name = _name(body)
    if not state.catalogue.remove(name):
        raise OllamaError(404, f"model '{name}' not found")
    state.scheduler.forget(name)
    return web.Response(status=200)


def _digest(request: web.Request) -> str:
    match = _DIGEST.match(request.match_info["digest"])
    if match is None:
        raise OllamaError(400, "invalid digest format")
    return match.group(1)


async def blob_exists(request: web.Request) -> web.Response:
    """`HEAD /api/blobs/sha256:<hex>`: 200 if uploaded, else 404."""
    digest = _digest(request)
    return web.Response(status=200 if digest in request.app[STATE].blobs else 404)


async def blob_upload(request: web.Request) -> web.Response:
    """`POST /api/blobs/sha256:<hex>`: 201 Created, 200 if known, 400 on a digest mismatch."""
    state = request.app[STATE]
    digest = _digest(request)
    if digest in state.blobs:
        return web.Response(status=200)
    hasher = hashlib.sha256()
    async for chunk in request.content.iter_chunked(1 << 16):
        hasher.update(chunk)
    actual = hasher.hexdigest()
    if actual != digest:
        raise OllamaError(
            400, f'digest mismatch, expected "sha256:{digest}", got "sha256:{actual}"'
        )
    state.blobs.add(digest)
    return web.Response(status=201)
