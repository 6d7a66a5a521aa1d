"""SPEC §4's lifecycle in process, against fake backends (the test seam of STYLE 17):
admitted once, settled exactly once on every exit (a finished stream, a client that
leaves before or during the answer, a backend that fails before or during it), the
concurrency slot always given back, the breaker hearing only the node's health, and
every in-request log line carrying the request id.

Each case runs in milliseconds, in both storage modes (SQLite and in-process state;
PostgreSQL and Redis): the gateway is the real one, built with
``build_gateway(settings, upstream=…)`` and driven through its ASGI interface.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest
import sqlalchemy as sa
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from nz_core.database import connect, create_engine
from nz_core.limits import Limits
from nz_core.schema import audit_log
from tests import services
from tests.inprocess import (
    FakeBackend,
    Handler,
    Running,
    call,
    chat_frames,
    gateway,
    ndjson,
)

CHAT: Final = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
# The in-process gateways' own Redis database (the e2e rigs use REDIS_DB + 1, the state
# store tests + 2).
LIFECYCLE_REDIS_DB: Final = services.REDIS_DB + 3


@pytest.fixture(params=["embedded", "production"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings of each storage mode, for :func:`tests.inprocess.gateway`."""
    if request.param == "embedded":
        return {}
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "redis_url": services.redis_url(LIFECYCLE_REDIS_DB),
    }


NATIVE: Final = ("/api/chat", {**CHAT, "stream": True})
OPENAI: Final = ("/v1/chat/completions", {**CHAT, "stream": True})


def streaming(
    words: list[str], *, stop_after: int | None = None, error: str | None = None, pause: float = 0
) -> Handler:
    """A backend that streams ``words``: whole, cut after ``stop_after`` frames (the
    connection dropped), or ended by an ``{"error": …}`` line."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for sent, frame in enumerate(chat_frames(words)):
            if stop_after is not None and sent == stop_after:
                if error is not None:
                    await response.write(ndjson([{"error": error}]))
                    await response.write_eof()
                    return response
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-answer
                return response
            await response.write(ndjson([frame]))
            await asyncio.sleep(pause)
        await response.write_eof()
        return response

    return handler


def answering(status: int, body: bytes, content_type: str = "application/json") -> Handler:
    async def handler(_request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type)

    return handler


@asynccontextmanager
async def settlements(running: Running) -> AsyncIterator[Counter[str]]:
    """Counts the settlements of each admitted request (by its admission ticket)."""
    admission = running.gateway.admission
    settle = admission.settle
    counts: Counter[str] = Counter()

    async def counted(ticket: Any, *args: Any, **kwargs: Any) -> Any:
        counts[ticket.ask.rid] += 1
        return await settle(ticket, *args, **kwargs)

    admission.settle = counted  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        admission.settle = settle  # type: ignore[method-assign]


async def audited(running: Running) -> list[Any]:
    """Every audit row, once the writer has flushed what it holds."""
    await running.gateway.audit.flush()
    engine = create_engine(running.database_url)
    try:
        async with connect(engine) as conn:
            return list((await conn.execute(sa.select(audit_log))).all())
    finally:
        await engine.dispose()


async def slot_is_free(running: Running, key: str) -> bool:
    """A key limited to one request in flight can start another one."""
    probe = await call(
        running.app,
        "POST",
        "/api/chat",
        headers={"Authorization": f"Bearer {key}"},
        body={**CHAT, "stream": False},
    )
    return probe.status != 429


# -- every exit settles exactly once --------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [NATIVE, OPENAI])
async def test_a_finished_stream_is_settled_once_with_its_counts(
    storage: dict[str, Any], tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    async with (
        FakeBackend(streaming(["a", "b", "c"])) as backend,
        gateway(backend.url, tmp_path, **storage) as gw,
    ):
        key = await gw.new_key(limits=Limits(concurrent=1), daily=10_000)
        async with settlements(gw) as settled:
            answer = await call(
                gw.app, "POST", path, headers={"Authorization": f"Bearer {key}"}, body=body
            )
        assert answer.status == 200
        assert list(settled.values()) == [1]
        rows = await audited(gw)
        mine = [r for r in rows if r.key_prefix == key[:12]]
        assert [(r.status, r.tokens_in, r.tokens_out) for r in mine] == [(200, 7, 3)]
        assert await slot_is_free(gw, key)


@pytest.mark.parametrize(("path", "body"), [NATIVE, OPENAI])
@pytest.mark.parametrize("leave_after", [0, 2])
async def test_a_client_that_leaves_is_settled_once_as_499_and_the_backend_stops(
    storage: dict[str, Any], tmp_path: Path, path: str, body: dict[str, Any], leave_after: int
) -> None:
    closed = asyncio.Event()
    quick = streaming(["ok"])

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        if closed.is_set():
            return await quick(request)  # the probe that the slot is free again
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            for frame in chat_frames(["w"] * 200):
                await response.write(ndjson([frame]))
                await asyncio.sleep(0.01)
        except (ConnectionResetError, asyncio.CancelledError):
            closed.set()
            raise
        return response

    async with FakeBackend(slow) as backend, gateway(backend.url, tmp_path, **storage) as gw:
        key = await gw.new_key(limits=Limits(concurrent=1), daily=100_000)
        async with settlements(gw) as settled:
            answer = await call(
                gw.app,
                "POST",
                path,
                headers={"Authorization": f"Bearer {key}"},
                body=body,
                leave_after_chunks=leave_after,
            )
        if "/api/chat" in backend.paths():  # it reached the backend...
            await asyncio.wait_for(closed.wait(), 2)  # ...which saw the client leave
        else:
            assert leave_after == 0  # it left before the gateway had sent it anywhere
        assert answer.status in (0, 200)  # nothing, or a started stream
        assert list(settled.values()) == [1]
        rows = [r for r in await audited(gw) if r.key_prefix == key[:12]]
        assert [r.status for r in rows] == [499]
        assert rows[0].tokens_out < 200
        assert await slot_is_free(gw, key)


@pytest.mark.parametrize(("path", "body"), [NATIVE, OPENAI])
@pytest.mark.parametrize("error", [None, "runner crashed"])
async def test_a_backend_that_fails_mid_stream_ends_it_with_one_error_frame(
    storage: dict[str, Any], tmp_path: Path, path: str, body: dict[str, Any], error: str | None
) -> None:
    async with (
        FakeBackend(streaming(["a", "b", "c", "d"], stop_after=2, error=error)) as backend,
        gateway(backend.url, tmp_path, **storage) as gw,
    ):
        key = await gw.new_key(limits=Limits(concurrent=1))
        async with settlements(gw) as settled:
            answer = await call(
                gw.app, "POST", path, headers={"Authorization": f"Bearer {key}"}, body=body
            )
        assert answer.status == 200
        text = answer.body.decode()
        assert text.count('"error":') == 1
        assert "The model backend failed during the stream." in text
        assert "runner crashed" not in text  # the backend's words go to the log only
        assert not text.rstrip().endswith("[DONE]")
        assert list(settled.values()) == [1]
        rows = [r for r in await audited(gw) if r.key_prefix == key[:12]]
        assert [(r.status, r.tokens_out) for r in rows] == [(502, 2)]
        assert await slot_is_free(gw, key)


async def test_a_backend_that_never_answers_is_a_504_settled_at_zero(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    async def silent(_request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.sleep(5)
        raise AssertionError("unreachable")

    async with (
        FakeBackend(silent) as backend,
        gateway(backend.url, tmp_path, upstream_read_timeout_s=0.3, **storage) as gw,
    ):
        key = await gw.new_key(limits=Limits(concurrent=1), daily=10_000)
        async with settlements(gw) as settled:
            answer = await call(
                gw.app, "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                body=CHAT,
            )  # fmt: skip
        assert answer.status == 504
        assert answer.json()["error"]["code"] == "upstream_timeout"
        assert list(settled.values()) == [1]
        rows = [r for r in await audited(gw) if r.key_prefix == key[:12]]
        assert [(r.status, r.tokens_in, r.tokens_out) for r in rows] == [(504, 0, 0)]


# -- the breaker hears the node, not the request --------------------------------------------


async def test_ollama_errors_pass_on_and_never_open_the_breaker(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    refusal = b'{"error":"model requires more system memory (9.1 GiB) than is available"}'
    async with (
        FakeBackend(answering(500, refusal)) as backend,
        gateway(backend.url, tmp_path, circuit_breaker_failures=2, **storage) as gw,
    ):
        for _ in range(5):
            answer = await call(gw.app, "POST", "/api/chat", headers=gw.auth, body=CHAT)
            assert answer.status == 502
            assert answer.json() == {
                "error": "The model backend failed: model requires more system memory "
                "(9.1 GiB) than is available"
            }
        assert gw.breaker.consecutive_failures == 0
        assert backend.paths().count("/api/chat") == 5


async def test_ambiguous_failures_count_only_when_the_liveness_probe_fails(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    """A 5xx that is not Ollama's starts a probe; the node still answering ``/api/version``
    keeps the breaker closed, a node that does not opens it."""
    version_ok = True

    async def proxy(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/api/version" and version_ok:
            return web.json_response({"version": "0.33.0"})
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    async with (
        FakeBackend(proxy) as backend,
        gateway(backend.url, tmp_path, circuit_breaker_failures=2, **storage) as gw,
    ):
        breaker = gw.breaker
        for _ in range(3):
            assert (
                await call(gw.app, "POST", "/api/chat", headers=gw.auth, body=CHAT)
            ).status == 502
            await asyncio.sleep(0.05)  # the probe answers
        assert breaker.consecutive_failures == 0
        version_ok = False
        for _ in range(3):
            await call(gw.app, "POST", "/api/chat", headers=gw.auth, body=CHAT)
            await asyncio.sleep(0.05)
        refused = await call(gw.app, "POST", "/api/chat", headers=gw.auth, body=CHAT)
        assert refused.status == 502
        assert "retry-after" in refused.headers  # the circuit is open


async def test_an_unreachable_backend_opens_the_breaker(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    backend = FakeBackend(answering(200, b"{}"))
    await backend.__aenter__()
    async with gateway(backend.url, tmp_path, circuit_breaker_failures=3, **storage) as gw:
        await backend.__aexit__()  # the node goes away: connections are refused
        refused = [
            await call(gw.app, "POST", "/api/chat", headers=gw.auth, body=CHAT) for _ in range(4)
        ]
        assert [a.status for a in refused] == [502] * 4
        assert ["retry-after" in a.headers for a in refused] == [False, False, False, True]


# -- context in every log line ---------------------------------------------------------------


async def test_a_warning_deep_in_the_stream_carries_the_request_id(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    async with (
        FakeBackend(streaming(["a", "b"], stop_after=1, error="boom")) as backend,
        gateway(backend.url, tmp_path, **storage) as gw,
    ):
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            answer = await call(
                gw.app,
                "POST",
                "/api/chat",
                headers={**gw.auth, "X-Request-ID": "trace-me-42"},
                body=CHAT,
            )
        assert answer.status == 200
        warning = next(e for e in logs if e["event"] == "backend_stream_error")
        assert warning["request_id"] == "trace-me-42"
        assert warning["key_prefix"] == gw.key[:12]
        line = next(e for e in logs if e["event"] == "request")
        assert (line["request_id"], line["status"]) == ("trace-me-42", 502)


# -- background jobs ---------------------------------------------------------------------


async def test_every_background_job_steps_and_readiness_stays_ok(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    """Each supervised job (reaper, sweeper, renewal, replay, revocation, discovery,
    audit) takes a step of its own without crashing: a job wired with the wrong
    arguments would be reported "failing" by /readyz only after three of its periods."""
    async with (
        FakeBackend(streaming(["a"]), answers_tags=True) as backend,
        gateway(backend.url, tmp_path, **storage) as gw,
    ):
        for job in gw.gateway.jobs:
            if job.interruptible:
                continue  # a LISTEN session: its step waits for notifications
            pause = await job.step()
            assert pause > 0, job.name
        assert {job.name for job in gw.gateway.jobs} >= {"sweeper", "lease-renewal", "revocation"}
        ready = await call(gw.app, "GET", "/readyz")
        assert ready.status == 200, ready.body
        assert ready.json()["checks"]["background"] == "ok"
