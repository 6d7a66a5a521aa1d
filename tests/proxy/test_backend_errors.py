"""What a client learns when the backend fails (SPEC §6.1, §6.2): Ollama's own message,
made safe to show (no address, host or path, no control characters, one line, at most
300 characters), on both surfaces alike; anything that is not Ollama's speaking gets the
generic message. Neither opens the circuit on its own (issue 13's breaker rules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import pytest
from aiohttp import web

from nz_proxy.upstream import MAX_DETAIL_CHARS, client_safe
from tests.inprocess import FakeBackend, Handler, call, gateway

# -- the sanitiser ---------------------------------------------------------------------------

USEFUL: Final = (
    "model requires more system memory (9.1 GiB) than is available (3.9 GiB)",
    "llama runner process has terminated: exit status 2",
    "model failed to load, this may be due to resource limitations or an internal error, "
    "check ollama server logs for details",
    "requested context size too large for model (num_ctx 131072 > 32768) e.g. qwen2.5:7b",
    "an error was encountered while running the model: CUDA error: out of memory",
    'json: cannot unmarshal string into Go value of type float32 for "temperature"',
)


@pytest.mark.parametrize("message", USEFUL)
def test_ollamas_useful_messages_pass_unchanged(message: str) -> None:
    assert client_safe(message) == message


@pytest.mark.parametrize(
    ("message", "safe"),
    [
        ('llama runner failed: Post "http://127.0.0.1:41234/completion": EOF',
         'llama runner failed: Post "[…] EOF'),
        ("dial tcp 10.0.3.17:11434: connect: connection refused",
         "dial tcp […]: connect: connection refused"),
        ("dial tcp gpu-node-7.internal:11434: i/o timeout", "dial tcp […]: i/o timeout"),
        ("lookup gpu-node-7.cluster.local: no such host", "lookup […]: no such host"),
        ("dial tcp [fd00::7]:11434: connection reset", "dial tcp […]: connection reset"),
        ("listening on fe80::1%eth0 failed", "listening on […] failed"),
        ("runner at localhost exited", "runner at […] exited"),
        ("error loading model /usr/share/ollama/.ollama/models/blobs/sha256-6a0746a1ec1a",
         "error loading model […]"),
        (r"open C:\Users\svc\.ollama\models\manifest: access denied",
         "open […]: access denied"),
        ("unix:///run/ollama.sock refused", "[…] refused"),
    ],
)  # fmt: skip
def test_addresses_hosts_and_paths_are_removed(message: str, safe: str) -> None:
    assert client_safe(message) == safe


def test_one_line_of_printable_text_at_most_300_characters() -> None:
    # A runner's output after the first line can be a stack trace.
    traced = "llama runner process has terminated: signal: aborted\ngoroutine 1 [running]:"
    assert client_safe(traced) == "llama runner process has terminated: signal: aborted"
    assert client_safe("out of\tmemory\x07 \x1b[31m now\r") == "out of memory [31m now"
    long = client_safe("weight " * 100)
    assert len(long) == MAX_DETAIL_CHARS
    assert long.endswith("…")
    # Cut between words before the addresses are found: nothing half-hidden survives.
    assert "10.0" not in client_safe("[a] " * 299 + "10.0.0.12 tail")


# -- through the gateway, on both surfaces ----------------------------------------------------

CHAT: Final = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
LEAKY: Final = (
    "llama runner process has terminated: error loading model "
    "/var/lib/ollama/blobs/sha256-ab12 on gpu-7.internal:11434"
)
SHOWN: Final = "llama runner process has terminated: error loading model […] on […]"


def answering(status: int, body: bytes, content_type: str = "application/json") -> Handler:
    async def handler(_request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type)

    return handler


def ollama_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


@pytest.mark.parametrize("stream", [False, True])
async def test_ollamas_500_reaches_both_surfaces_made_safe(tmp_path: Path, stream: bool) -> None:
    async with (
        FakeBackend(answering(500, ollama_error(LEAKY))) as backend,
        gateway(backend.url, tmp_path, circuit_breaker_failures=2) as gw,
    ):
        body = {**CHAT, "stream": stream}
        native = await call(gw.app, "POST", "/api/chat", headers=gw.auth, body=body)
        openai = await call(gw.app, "POST", "/v1/chat/completions", headers=gw.auth, body=body)
        for _ in range(3):  # more than the breaker's threshold
            await call(gw.app, "POST", "/api/chat", headers=gw.auth, body=body)
        assert gw.breaker.consecutive_failures == 0
    # A proper status even for a stream: nothing was sent before the backend failed.
    assert native.status == openai.status == 502
    assert native.json() == {"error": f"The model backend failed: {SHOWN}"}
    assert openai.json() == {
        "error": {
            "message": f"The model backend failed: {SHOWN}",
            "type": "api_error",
            "param": None,
            "code": "upstream_unavailable",
        }
    }
    assert "retry-after" not in native.headers  # waiting does not cure a model too big


async def test_a_full_queue_passes_its_message_and_a_wait(tmp_path: Path) -> None:
    busy = "server busy, please try again.  maximum pending requests exceeded"
    async with (
        FakeBackend(answering(503, ollama_error(busy))) as backend,
        gateway(backend.url, tmp_path) as gw,
    ):
        answer = await call(gw.app, "POST", "/v1/chat/completions", headers=gw.auth, body=CHAT)
    assert answer.status == 502
    assert answer.json()["error"]["message"] == (
        "The model backend failed: server busy, please try again. maximum pending requests exceeded"
    )
    assert answer.headers["retry-after"] == "1"


async def test_an_answer_that_is_not_ollamas_stays_generic(tmp_path: Path) -> None:
    """A proxy's HTML error page in front of the node says nothing for the client."""
    page = b"<html>502 Bad Gateway nginx at 10.0.0.5</html>"
    async with (
        FakeBackend(answering(502, page, "text/html")) as backend,
        gateway(backend.url, tmp_path) as gw,
    ):
        native = await call(gw.app, "POST", "/api/chat", headers=gw.auth, body=CHAT)
        openai = await call(gw.app, "POST", "/v1/chat/completions", headers=gw.auth, body=CHAT)
    assert native.json() == {"error": "The model backend is unavailable."}
    assert openai.json()["error"]["message"] == "The model backend is unavailable."


async def test_a_refusal_passes_its_message_made_safe(tmp_path: Path) -> None:
    refusal = ollama_error("invalid option num_gpu: see /etc/ollama/env on node-3.lan")
    async with (
        FakeBackend(answering(400, refusal)) as backend,
        gateway(backend.url, tmp_path) as gw,
    ):
        answer = await call(gw.app, "POST", "/v1/chat/completions", headers=gw.auth, body=CHAT)
    assert answer.status == 400
    assert answer.json()["error"]["message"] == "invalid option num_gpu: see […] on […]"
