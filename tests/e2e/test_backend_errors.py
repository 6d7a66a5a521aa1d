"""Ollama's own failures reach the real clients (issue 15): the mock answers 500 with
Ollama's messages, and the `openai` SDK and ollama-python each get the message, made
safe, in their own error, while the circuit stays closed for everyone else."""

from __future__ import annotations

from typing import Final

import ollama
import openai
import pytest

from tests.e2e.conftest import RigFactory

CHAT: Final = {"model": "llama3.2", "messages": [{"role": "user", "content": "tell me"}]}

pytestmark = pytest.mark.parametrize("deployment", ["embedded"], indirect=True)


def chat_through(client: ollama.Client, stream: bool) -> object:
    """ollama-python's chat, read to the end (a stream raises while it is read)."""
    answer = client.chat(stream=stream, **CHAT)  # type: ignore[call-overload]
    return list(answer) if stream else answer


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        ("model requires more system memory (12.4 GiB) than is available (7.6 GiB)",
         "model requires more system memory (12.4 GiB) than is available (7.6 GiB)"),
        ("llama runner process has terminated: error loading model: "
         "/usr/share/ollama/.ollama/models/blobs/sha256-9f8e7d",
         "llama runner process has terminated: error loading model: […]"),
        ('model failed to load: Post "http://127.0.0.1:39417/load": context deadline exceeded',
         'model failed to load: Post "[…] context deadline exceeded'),
    ],
)  # fmt: skip
def test_the_clients_get_ollamas_message_made_safe(rig: RigFactory, said: str, shown: str) -> None:
    r = rig("--token-rate", "0", CIRCUIT_BREAKER_FAILURES="2", CIRCUIT_BREAKER_RESET_S="30")
    r.faults(fail_next=4, fail_status=500, fail_message=said, paths=["/api/chat"])
    expected = f"The model backend failed: {shown}"

    sdk = openai.OpenAI(base_url=r.gateway.url + "/v1", api_key=r.key, max_retries=0)
    with sdk, pytest.raises(openai.InternalServerError) as sdk_error:
        sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert sdk_error.value.status_code == 502
    assert sdk_error.value.code == "upstream_unavailable"
    assert sdk_error.value.body == {
        "message": expected,
        "type": "api_error",
        "param": None,
        "code": "upstream_unavailable",
    }

    with ollama.Client(host=r.gateway.url, headers=r.auth) as client:
        for stream in (False, True):
            with pytest.raises(ollama.ResponseError) as native_error:
                chat_through(client, stream)
            assert native_error.value.status_code == 502
            assert native_error.value.error == expected

    sse = r.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert sse.status_code == 502
    assert sse.json()["error"]["message"] == expected
    # Four failures, twice the breaker's threshold, and the node still serves.
    assert r.post("/api/chat", {**CHAT, "stream": False}).status_code == 200
    assert r.mock_stats()["requests"]["/api/chat"] == 5
