"""The gateway in process: the lifecycle test seam (STYLE 17).

:class:`FakeBackend` is a backend made of one handler function, served on a loopback
port in the test's own event loop (aiohttp's ``RawTestServer``), the way httpx's
``MockTransport`` serves its users: each test says what the backend answers, down to a
stream that stops half-way. :func:`gateway` builds the real gateway in front of it
with ``build_gateway(settings, upstream=…)`` and runs its lifespan. :func:`call` drives
the ASGI application directly: it sends the request, collects the response message by
message, and can make the client leave at any point, which an HTTP client cannot do
on cue. Real processes stay for what processes are for (signals, workers, kill -9).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import RawTestServer

from nz_core import admin
from nz_core.database import create_engine
from nz_core.keys import TEST_HASH_PROFILE, KeyHasher
from nz_core.limits import Limits
from nz_core.migrations import upgrade
from nz_proxy.app import asgi_app, build_gateway
from nz_proxy.breaker import CircuitBreaker
from nz_proxy.gateway import Gateway
from nz_proxy.settings import Settings
from nz_proxy.types import ASGIApp, Message
from nz_proxy.upstream import Upstream

HASHER = KeyHasher(TEST_HASH_PROFILE)
MODELS = ("llama3.2:latest", "qwen2.5:7b", "all-minilm:latest")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def tags(models: tuple[str, ...] = MODELS) -> web.Response:
    entries = [
        {
            "name": name,
            "model": name,
            "modified_at": "2026-01-01T00:00:00Z",
            "size": 1,
            "digest": "0" * 64,
            "details": {},
        }
        for name in models
    ]
    return web.json_response({"models": entries})


class FakeBackend:
    """A backend whose every request goes to ``handler`` (``/api/tags`` answers the
    model list and ``/api/ps`` nothing loaded, unless the handler is asked for them
    too). ``received`` keeps what came."""

    def __init__(self, handler: Handler, *, answers_tags: bool = False) -> None:
        self.handler = handler
        self.answers_tags = answers_tags
        self.received: list[tuple[str, str, bytes]] = []
        self._server = RawTestServer(self._serve)

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        if request.path == "/api/tags" and not self.answers_tags:
            return tags()
        if request.path == "/api/ps" and not self.answers_tags:
            return web.json_response({"models": []})  # residency polls: nothing loaded
        self.received.append((request.method, request.path, body))
        return await self.handler(request)

    @property
    def url(self) -> str:
        return str(self._server.make_url("")).rstrip("/")

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.received]

    async def __aenter__(self) -> FakeBackend:
        await self._server.start_server()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._server.close()


def ndjson(frames: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(f).encode() + b"\n" for f in frames)


def chat_frames(words: list[str], *, prompt: int = 7) -> list[dict[str, Any]]:
    """An ``/api/chat`` stream: one frame per word, then the final frame with counts."""
    frames: list[dict[str, Any]] = [
        {"model": "llama3.2", "created_at": "2026-01-01T00:00:00Z",
         "message": {"role": "assistant", "content": w}, "done": False}
        for w in words
    ]  # fmt: skip
    frames.append(
        {
            "model": "llama3.2",
            "created_at": "2026-01-01T00:00:01Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": prompt,
            "eval_count": len(words),
        }
    )
    return frames


@dataclass
class Running:
    """A gateway in this process, its services, and one key allowed every model."""

    app: ASGIApp
    gateway: Gateway
    key: str
    database_url: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker of the one backend node."""
        (backend,) = self.gateway.fleet.backends.values()
        return backend.upstream.breaker

    async def new_key(self, *, limits: Limits | None = None, **budgets: int) -> str:
        engine = self.gateway.engine
        tenant = f"t{id(object())}"
        await admin.create_tenant(engine, tenant, allow_all_models=True)
        made = await admin.create_key(engine, tenant, "k", limits=limits or Limits(), hasher=HASHER)
        key = made.key
        if budgets:
            await admin.set_budget(engine, key[:12], **budgets)
        return key


@asynccontextmanager
async def gateway(backend_url: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[Running]:
    """The real gateway (embedded storage unless ``overrides`` say otherwise) in front of
    ``backend_url``, started and stopped through its ASGI lifespan."""
    database_url = overrides.pop("database_url", None)
    if database_url is None:
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
        await asyncio.to_thread(upgrade, database_url)
    settings = Settings(database_url=database_url, ollama_base_url=backend_url, **overrides)
    upstream = Upstream(
        backend_url,
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
        breaker=CircuitBreaker(settings.circuit_breaker_failures, settings.circuit_breaker_reset_s),
    )
    built = build_gateway(settings, upstream=upstream)
    app = asgi_app(settings, built)
    engine = create_engine(database_url)
    try:
        tenant = f"t{id(built)}"
        await admin.create_tenant(engine, tenant, allow_all_models=True)
        key = (await admin.create_key(engine, tenant, "k", hasher=HASHER)).key
    finally:
        await engine.dispose()
    lifespan = _Lifespan(app)
    await lifespan.start()
    try:
        yield Running(app, built, key, database_url)
    finally:
        await lifespan.stop()


class _Lifespan:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._task = asyncio.create_task(self.app(scope, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        started = await self._outbox.get()
        assert started["type"] == "lifespan.startup.complete", started

    async def stop(self) -> None:
        await self._inbox.put({"type": "lifespan.shutdown"})
        stopped = await self._outbox.get()
        assert stopped["type"] == "lifespan.shutdown.complete", stopped
        assert self._task is not None
        await self._task


@dataclass
class Answer:
    """What the client received: the status, the headers and the body chunks."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: ASGIApp,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | dict[str, Any] = b"",
    leave_after_chunks: int | None = None,
    client: str = "127.0.0.1",
) -> Answer:
    """One request through the ASGI application. With ``leave_after_chunks``, the client
    disconnects once it has received that many body chunks (0: before any)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        + [(b"content-length", str(len(raw)).encode())],
        "client": (client, 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    answer = Answer()
    gone = asyncio.Event()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if gone.is_set():
            return  # written to a socket nobody reads any more
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            if message.get("body"):
                answer.chunks.append(message["body"])
            if leave_after_chunks is not None and len(answer.chunks) >= leave_after_chunks:
                gone.set()
            if not message.get("more_body", False):
                gone.set()  # the exchange is over: a real server reports it too

    if leave_after_chunks == 0:
        gone.set()
    await app(scope, receive, send)
    return answer
