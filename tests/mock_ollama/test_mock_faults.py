"""Injected faults, set at runtime through `/_mock/faults`, and the disconnect record."""

from __future__ import annotations

import time
from typing import Any

import httpx
import ollama
import pytest

from tests.processes import MockProcess

from .frames import ndjson_frames

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "llama3.2", "messages": MESSAGES}


def _faults(http: httpx.Client, **faults: Any) -> dict[str, Any]:
    response = http.post("/_mock/faults", json=faults)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_fail_next_scoped_to_a_path(http: httpx.Client, client: ollama.Client) -> None:
    _faults(http, fail_next=2, fail_status=503, fail_message="busy", paths=["/api/chat"])
    assert http.get("/api/tags").status_code == 200
    first = http.post("/api/chat", json=CHAT)
    assert (first.status_code, first.json()) == (503, {"error": "busy"})
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="llama3.2", messages=MESSAGES)
    assert (raised.value.status_code, raised.value.error) == (503, "busy")
    assert http.post("/api/chat", json=CHAT).status_code == 200
    stats = http.get("/_mock/stats").json()
    assert stats["requests"]["/api/chat"] == 3
    assert stats["faults"]["fail_next"] == 0


def test_fail_next_defaults_to_every_path_with_500(http: httpx.Client) -> None:
    _faults(http, fail_next=1)
    failed = http.get("/")
    assert (failed.status_code, failed.json()) == (500, {"error": "mock: injected failure"})
    assert http.get("/").status_code == 200


def test_control_paths_are_never_faulted(http: httpx.Client) -> None:
    _faults(http, fail_next=5, delay_first_byte_s=2.0)
    started = time.monotonic()
    assert http.get("/_mock/stats").status_code == 200
    assert time.monotonic() - started < 1.0


def test_delay_first_byte(http: httpx.Client) -> None:
    _faults(http, delay_first_byte_s=0.4, paths=["/api/version"])
    started = time.monotonic()
    assert http.get("/api/version").status_code == 200
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    http.get("/")
    assert time.monotonic() - started < 0.3


def test_cut_stream_after_drops_the_connection(http: httpx.Client) -> None:
    _faults(http, cut_stream_after=3)
    with http.stream("POST", "/api/chat", json=CHAT) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]
        # no final frame and no error line: the chunked body just stops
        with pytest.raises(httpx.RemoteProtocolError):
            next(lines)
    assert all('"done":false' in line for line in received)
    streams = http.get("/_mock/stats").json()["streams"]
    assert (streams["cut"], streams["completed"]) == (1, 0)


def test_error_after_ends_with_an_error_line(http: httpx.Client, client: ollama.Client) -> None:
    _faults(http, error_after=2, error_message="runner crashed")
    response = http.post("/api/chat", json=CHAT)
    assert response.status_code == 200
    frames = ndjson_frames(response.content)
    assert len(frames) == 3
    assert frames[-1] == {"error": "runner crashed"}
    assert all(f["done"] is False for f in frames[:2])
    with pytest.raises(ollama.ResponseError) as raised:
        list(client.chat(model="llama3.2", messages=MESSAGES, stream=True))
    assert raised.value.error == "runner crashed"
    assert http.get("/_mock/stats").json()["streams"]["errored"] == 2


def test_stream_faults_leave_non_streamed_answers_alone(http: httpx.Client) -> None:
    _faults(http, cut_stream_after=1, error_after=1)
    assert http.post("/api/chat", json={**CHAT, "stream": False}).json()["done"] is True


def test_fault_updates_are_partial_and_clearable(http: httpx.Client) -> None:
    _faults(http, fail_next=2, paths="/api/chat")
    body = _faults(http, delay_first_byte_s=0.5)
    assert body["faults"]["fail_next"] == 2
    assert body["faults"]["paths"] == ["/api/chat"]
    assert body["faults"]["delay_first_byte_s"] == 0.5
    cleared = _faults(http, clear=True, error_after=4)
    assert cleared["faults"]["fail_next"] == 0
    assert cleared["faults"]["delay_first_byte_s"] == 0.0
    assert cleared["faults"]["error_after"] == 4
    assert http.get("/_mock/faults").json() == cleared


@pytest.mark.parametrize(
    "bad",
    [
        {"nope": 1},
        {"fail_next": -1},
        {"fail_next": True},
        {"fail_status": 200},
        {"delay_first_byte_s": "1"},
        {"paths": [1]},
        {"refuse_connections_s": -1},
    ],
)
def test_bad_fault_updates_are_refused(http: httpx.Client, bad: dict[str, Any]) -> None:
    response = http.post("/_mock/faults", json=bad)
    assert response.status_code == 400
    assert response.json()["error"]
    assert http.get("/_mock/faults").json()["faults"]["fail_next"] == 0


def test_refuse_connections_then_listen_again(mock: MockProcess, http: httpx.Client) -> None:
    body = _faults(http, refuse_connections_s=1.0)
    assert body["refusing_connections_until"] > time.time()
    started = time.monotonic()
    with httpx.Client(base_url=mock.url, timeout=2) as fresh:
        with pytest.raises(httpx.ConnectError, match="refused"):
            fresh.get("/")
        # the shared client's keep-alive connection was closed too
        with pytest.raises(httpx.ConnectError):
            http.get("/")
        with (
            ollama.Client(host=mock.url) as client,
            pytest.raises(ConnectionError),
        ):
            client.list()
        while True:
            try:
                fresh.get("/").raise_for_status()
                break
            except httpx.ConnectError:
                assert time.monotonic() - started < 5
                time.sleep(0.05)
    assert 0.9 <= time.monotonic() - started < 3
    assert http.get("/_mock/faults").json()["refusing_connections_until"] is None


def test_disconnect_is_noticed_and_generation_stops(mock: MockProcess, http: httpx.Client) -> None:
    http.post("/_mock/config", json={"token_rate": 20, "response_tokens": 200})
    with (
        httpx.Client(base_url=mock.url, timeout=5) as reader,
        reader.stream("POST", "/api/chat", json=CHAT) as response,
    ):
        lines = response.iter_lines()
        next(lines)
        next(lines)
        closed_at = time.time()
    # leaving the block closed the half-read response, and with it the connection

    deadline = time.monotonic() + 2
    while not (stats := http.get("/_mock/stats").json())["disconnects"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.02)
    (event,) = stats["disconnects"]
    assert event["path"] == "/api/chat"
    assert -0.05 <= event["at"] - closed_at < 1.0
    assert 2 <= event["frames_sent"] <= 4
    assert event["noticed_by"] in {"cancelled", "transport", "write"}
    assert stats["open_streams"] == 0
    assert stats["streams"] == {
        "started": 1,
        "completed": 0,
        "cut": 0,
        "errored": 0,
        "disconnected": 1,
    }
    # nothing more is generated once the client is gone
    time.sleep(0.3)
    assert http.get("/_mock/stats").json()["frames_sent"] == stats["frames_sent"]
