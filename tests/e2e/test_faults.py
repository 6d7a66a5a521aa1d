"""The backend failing in every way the mock can (SPEC §4.7, §6.2), through real gateway
and mock processes and the real clients: each test gets its own mock and its own
gateway, so breaker state and faults never leak between tests.

One storage mode is enough here: how the backend fails does not depend on it. The same
exits are settled in both storage modes by the in-process lifecycle tests
(``tests/proxy/test_lifecycle.py``)."""

from __future__ import annotations

import json
import time

import httpx
import ollama
import openai
import pytest

from tests.e2e.conftest import RigFactory

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "tell me"}]}

pytestmark = pytest.mark.parametrize("deployment", ["embedded"], indirect=True)


def test_dead_backend_gives_502_everywhere(rig: RigFactory) -> None:
    r = rig(dead_backend=True)
    checks = [
        r.post("/v1/chat/completions", CHAT),
        r.post("/v1/chat/completions", {**CHAT, "stream": True}),
        r.post("/v1/embeddings", {"model": "all-minilm", "input": "x"}),
        r.post("/api/chat", CHAT),
        r.post("/api/generate", {"model": "llama3.2", "prompt": "x"}),
        r.post("/api/show", {"model": "llama3.2"}),
        httpx.get(r.gateway.url + "/api/tags", headers=r.auth),
        httpx.get(r.gateway.url + "/api/version", headers=r.auth),
        httpx.get(r.gateway.url + "/v1/models", headers=r.auth),
    ]
    for response in checks:
        assert response.status_code == 502, (response.request.url, response.text)
        assert "Traceback" not in response.text
    assert checks[0].json()["error"]["code"] == "upstream_unavailable"
    ready = httpx.get(r.gateway.url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["backend"] == "unreachable"


def test_breaker_opens_after_five_unreachable_attempts_then_half_opens(rig: RigFactory) -> None:
    r = rig("--token-rate", "0", CIRCUIT_BREAKER_FAILURES="5", CIRCUIT_BREAKER_RESET_S="2")
    r.faults(refuse_connections_s=1.5)
    for _ in range(5):
        assert r.post("/api/chat", {**CHAT, "stream": False}).status_code == 502
    opened = r.post("/v1/chat/completions", CHAT)
    assert opened.status_code == 502
    assert 1 <= int(opened.headers["retry-after"]) <= 2
    assert int(opened.headers["retry-after-ms"]) <= 2000
    time.sleep(2.1)  # the mock listens again after 1.5 s, the circuit half-opens at 2
    assert r.mock_stats()["requests"].get("/api/chat", 0) == 0  # never reached
    probe = r.post("/v1/chat/completions", CHAT)
    assert probe.status_code == 200
    assert r.post("/api/chat", {**CHAT, "stream": False}).status_code == 200
    assert r.mock_stats()["requests"]["/api/chat"] == 2


def test_a_proxy_failing_in_front_of_the_node_opens_the_breaker_after_probes(
    rig: RigFactory,
) -> None:
    """Plain-text 5xx are not Ollama's: a liveness probe decides, and it fails too."""
    r = rig("--token-rate", "0", CIRCUIT_BREAKER_FAILURES="3", CIRCUIT_BREAKER_RESET_S="30")
    r.faults(fail_next=1000, fail_status=502, fail_plain=True, fail_message="Bad Gateway")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        failed = r.post("/api/chat", {**CHAT, "stream": False})
        assert failed.status_code == 502
        assert failed.json() == {"error": "The model backend is unavailable."}
        if "retry-after" in failed.headers:
            break  # refused by the open circuit
        time.sleep(0.1)
    else:
        raise AssertionError("the circuit never opened")


def test_one_tenants_bad_requests_never_open_the_breaker(rig: RigFactory) -> None:
    """Ollama answers some bad requests with 500 (a model too large for memory): an
    answer in Ollama's own shape is a live node, so the circuit stays closed."""
    r = rig("--token-rate", "0", CIRCUIT_BREAKER_FAILURES="3", CIRCUIT_BREAKER_RESET_S="30")
    message = "model requires more system memory (9.1 GiB) than is available (3.9 GiB)"
    r.faults(fail_next=8, fail_status=500, fail_message=message, paths=["/api/chat"])
    for _ in range(8):
        failed = r.post("/api/chat", {**CHAT, "stream": False})
        assert failed.status_code == 502
        assert failed.json() == {"error": f"The model backend failed: {message}"}
    time.sleep(0.3)  # a liveness probe, had one been started, has answered by now
    assert r.post("/api/chat", {**CHAT, "stream": False}).status_code == 200
    assert r.post("/v1/chat/completions", CHAT).status_code == 200
    assert r.mock_stats()["requests"]["/api/chat"] == 10


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_client_disconnect_stops_the_backend_within_a_second(rig: RigFactory, path: str) -> None:
    r = rig("--token-rate", "20", "--response-tokens", "400")
    body = {**CHAT, "stream": True}
    with httpx.stream(
        "POST", r.gateway.url + path, headers=r.auth, json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert received
        closed_at = time.time()
    deadline = time.monotonic() + 5
    disconnects: list[dict[str, float]] = []
    while time.monotonic() < deadline and not disconnects:
        disconnects = r.mock_stats()["disconnects"]
        time.sleep(0.05)
    assert disconnects, "the backend never saw the client leave"
    assert disconnects[0]["at"] - closed_at < 1.0
    assert disconnects[0]["frames_sent"] < 400


def test_stream_cut_by_the_backend_ends_with_one_error_frame(rig: RigFactory) -> None:
    r = rig("--token-rate", "0", "--cut-stream-after", "3")
    native = r.post("/api/chat", {**CHAT, "stream": True})
    lines = native.text.splitlines()
    assert native.status_code == 200
    assert len(lines) == 4
    assert all(json.loads(line).get("done") is False for line in lines[:3])
    assert set(json.loads(lines[3])) == {"error"}

    sse = r.post("/v1/chat/completions", {**CHAT, "stream": True})
    events = [e for e in sse.text.split("\n\n") if e]
    assert json.loads(events[-1].removeprefix("data: "))["error"]["type"] == "server_error"
    assert "[DONE]" not in sse.text
    assert sum("error" in event for event in events) == 1

    sdk = openai.OpenAI(base_url=r.gateway.url + "/v1", api_key=r.key, max_retries=0)
    with sdk, pytest.raises(openai.APIError):
        for _ in sdk.chat.completions.create(stream=True, **CHAT):  # type: ignore[call-overload]
            pass
    with (
        ollama.Client(host=r.gateway.url, headers=r.auth) as client,
        pytest.raises(ollama.ResponseError),
    ):
        for _ in client.chat(stream=True, **CHAT):  # type: ignore[call-overload]
            pass


def test_error_line_from_the_backend_ends_each_format_without_its_text(rig: RigFactory) -> None:
    """Ollama's mid-stream error text can name internal hosts: clients get a generic
    error frame in their stream's format, the log gets the original (SPEC §6.1)."""
    secret = "failed to reach runner at http://gpu-node-7.internal:41231"
    r = rig("--token-rate", "0", "--error-after", "2", "--error-message", secret)
    native = r.post("/api/generate", {"model": "llama3.2", "prompt": "x"})
    assert json.loads(native.text.splitlines()[-1]) == {
        "error": "The model backend failed during the stream."
    }
    sse = r.post("/v1/completions", {"model": "llama3.2", "prompt": "x", "stream": True})
    last = json.loads([e for e in sse.text.split("\n\n") if e][-1].removeprefix("data: "))
    assert last["error"]["message"] == "The model backend failed during the stream."
    assert "gpu-node-7" not in native.text + sse.text
    assert "gpu-node-7" in r.gateway.output()


def test_no_first_byte_in_time_is_504(rig: RigFactory) -> None:
    r = rig("--token-rate", "0", UPSTREAM_READ_TIMEOUT_S="1")
    r.faults(delay_first_byte_s=3, paths=["/api/chat"])  # discovery (/api/tags) stays quick
    for path, body in (
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/api/chat", CHAT),
    ):
        response = r.post(path, body)
        assert response.status_code == 504, path
    assert response.json() == {"error": "The model backend timed out."}


def test_backend_refusals_pass_their_message(rig: RigFactory) -> None:
    r = rig("--token-rate", "0")
    r.faults(fail_next=1, fail_status=400, fail_message="bad option num_ctx", paths=["/api/chat"])
    refused = r.post("/v1/chat/completions", CHAT)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "bad option num_ctx"
    r.faults(
        fail_next=1,
        fail_status=500,
        fail_message='llama runner failed: Post "http://127.0.0.1:41234/completion": EOF',
        paths=["/api/chat"],
    )
    failed = r.post("/api/chat", {**CHAT, "stream": False})
    assert failed.status_code == 502
    # The backend's own words, without the internal address.
    assert failed.json() == {
        "error": 'The model backend failed: llama runner failed: Post "[…] EOF'
    }
