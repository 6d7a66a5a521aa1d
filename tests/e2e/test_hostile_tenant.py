"""What a hostile tenant found, each as a regression test against real gateways in both
storage modes (issue 13; SPEC §3, §4.4, §4.7-4.9).

1. parser differential: Ollama reads keys case-insensitively (``Model``, a Kelvin sign
   for ``k``, a long s for ``s``); the gateway must read the same body or refuse it;
2. ``context`` ids, images and templates escaped the prompt estimate;
7. a frozen Redis took 1.5 s to give a 503;
8. one tenant's wrongly typed options reached Ollama (which answers them with 500);
9. ``/api/embed`` was audited with no tokens;
10. a stream that failed half-way was audited as a success;
11. ``/API/PULL`` answered 404 where ``/api/pull`` answers 403, and a key sent as a
    model reached the audit row.
(3-6 have their own suites: the audit writer, argon2 bursts and credentials.)
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from nz_core import admin
from nz_core.database import connect
from nz_core.schema import audit_log
from tests.e2e.conftest import Deployment, RigFactory
from tests.processes import private_redis

MESSAGES: Final = [{"role": "user", "content": "hi"}]
CHAT: Final = {"model": "llama3.2", "messages": MESSAGES, "stream": False}
KELVIN: Final = "\u212a"  # reads as k to Go
LONG_S: Final = "\u017f"  # reads as s to Go


def post(url: str, key: str, path: str, body: object) -> httpx.Response:
    return httpx.post(
        url + path,
        headers={"Authorization": f"Bearer {key}"},
        content=json.dumps(body, ensure_ascii=False).encode(),
        timeout=30,
    )


POLLED = frozenset({"/api/tags", "/api/ps"})


def mock_requests(deployment: Deployment) -> dict[str, int]:
    """What the backend received, but the gateway's own polling of ``/api/tags`` and
    ``/api/ps`` (discovery and residency)."""
    stats: dict[str, int] = httpx.get(deployment.mock.url + "/_mock/stats").json()["requests"]
    return {path: count for path, count in stats.items() if path not in POLLED}


async def audit_rows(engine: AsyncEngine, key: str, expected: int) -> list[Any]:
    """The audit rows of ``key`` once there are ``expected`` of them (or after 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        async with connect(engine) as conn:
            rows = (
                await conn.execute(sa.select(audit_log).where(audit_log.c.key_prefix == key[:12]))
            ).all()
        if len(rows) >= expected or time.monotonic() > deadline:
            return list(rows)
        await asyncio.sleep(0.1)


# -- 1. one body, one reading -------------------------------------------------------------

SMUGGLERS: Final = [
    ("/api/chat", {**CHAT, "Model": "qwen2.5:7b"}, "Model"),
    ("/api/generate", {"model": "llama3.2", "prompt": "hi", "MODEL": "qwen2.5:7b"}, "MODEL"),
    ("/api/embed", {"model": "all-minilm", "input": "hi", "Model": "nomic-embed-text"}, "Model"),
    ("/api/show", {"model": "llama3.2", "mOdel": "qwen2.5:7b"}, "mOdel"),
    ("/api/chat", {**CHAT, "Options": {"num_predict": -1}, "options": {}}, "options"),
    ("/api/chat", {**CHAT, "keep_alive": "5m", f"{KELVIN}eep_alive": -1}, f"{KELVIN}eep_alive"),
    ("/api/generate", {**CHAT, "prompt": "x", f"{LONG_S}tream": True}, f"{LONG_S}tream"),
    ("/api/chat", {**CHAT, "options": {"NUM_PREDICT": -1}}, "options.NUM_PREDICT"),
    ("/v1/chat/completions", {"model": "llama3.2", "messages": MESSAGES, "Model": "x"}, "Model"),
]


@pytest.mark.parametrize(("path", "body", "param"), SMUGGLERS)
async def test_keys_ollama_would_read_twice_are_refused_and_never_forwarded(
    deployment: Deployment, path: str, body: dict[str, Any], param: str
) -> None:
    key = await deployment.key(models=["llama3.2", "all-minilm"])
    before = mock_requests(deployment)
    refused = post(deployment.url, key, path, body)
    assert refused.status_code == 400, refused.text
    if path.startswith("/v1/"):
        assert refused.json()["error"]["param"] == param
    else:
        assert param.split(".")[-1] in refused.json()["error"]
    assert mock_requests(deployment) == before


async def test_a_key_sent_twice_is_refused(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    raw = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"model":"qwen2.5:7b"}'
    refused = httpx.post(
        deployment.url + "/api/chat", headers={"Authorization": f"Bearer {key}"}, content=raw
    )
    assert refused.status_code == 400
    assert "'model' appears more than once" in refused.json()["error"]


async def test_a_lone_case_variant_is_read_as_ollama_reads_it(deployment: Deployment) -> None:
    """``Model`` alone is the model to Ollama, so it is the model the policy checks;
    a long s for the s of ``stream`` is ``stream``."""
    key = await deployment.key(models=["llama3.2"])
    smuggled = {"Model": "qwen2.5:7b", "messages": MESSAGES, "stream": False}
    assert post(deployment.url, key, "/api/chat", smuggled).status_code == 403
    allowed = {"MODEL": "llama3.2", "messages": MESSAGES, f"{LONG_S}tream": False}
    answer = post(deployment.url, key, "/api/chat", allowed)
    assert answer.status_code == 200
    # stream false as Ollama read it: one JSON answer, not NDJSON.
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["done"] is True
    kelvin_model = {"model": f"{KELVIN}lama3.2", "messages": MESSAGES, "stream": False}
    assert post(deployment.url, key, "/api/chat", kelvin_model).status_code == 403


# -- 2. everything the backend processes is estimated --------------------------------------


async def test_context_ids_and_images_count_against_the_budget(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    await admin.set_budget(deployment.engine, key[:12], daily=1000)
    before = mock_requests(deployment).get("/api/generate", 0)
    context = list(range(1, 50_001))
    body = {
        "model": "llama3.2",
        "prompt": "hi",
        "context": context,
        "options": {"num_predict": 1},
        "stream": False,
    }
    async with httpx.AsyncClient(timeout=60) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    deployment.url + "/api/generate",
                    headers={"Authorization": f"Bearer {key}"},
                    json=body,
                )
                for _ in range(20)
            )
        )
    assert [a.status_code for a in answers] == [429] * 20
    assert all("budget" in a.json()["error"] for a in answers)
    images = {**body, "context": None, "images": ["iVBORw0KGgo="] * 2}  # 2 x 768 tokens
    assert post(deployment.url, key, "/api/generate", images).status_code == 429
    template = {**body, "context": None, "template": "x" * 3000}  # ~1,000 tokens
    assert post(deployment.url, key, "/api/generate", template).status_code == 429
    assert mock_requests(deployment).get("/api/generate", 0) == before
    rows = await audit_rows(deployment.engine, key, 22)
    assert sum(row.tokens_in + row.tokens_out for row in rows) == 0


# -- 7. a frozen Redis is a 503 within a second --------------------------------------------


@pytest.mark.parametrize("deployment", ["production"], indirect=True)
async def test_a_frozen_redis_is_a_503_within_a_second(
    rig: RigFactory, deployment: Deployment, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as redis_server:
        r = rig("--token-rate", "0", REDIS_URL=redis_server.url)
        key = await deployment.key(allow_all=True)
        assert post(r.gateway.url, key, "/api/chat", CHAT).status_code == 200  # cached now
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            async with httpx.AsyncClient(timeout=10) as client:

                async def timed() -> tuple[int, float]:
                    started = time.monotonic()
                    response = await client.post(
                        r.gateway.url + "/v1/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": "llama3.2", "messages": MESSAGES},
                    )
                    return response.status_code, time.monotonic() - started

                single = await timed()
                burst = await asyncio.gather(*(timed() for _ in range(100)))
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        print(f"frozen Redis: one request {single[1]:.3f} s, 100 at once max "
              f"{max(t for _, t in burst):.3f} s")  # fmt: skip
        assert single[0] == 503
        assert single[1] < 1.0
        assert {status for status, _ in burst} == {503}
        assert max(t for _, t in burst) < 1.0


# -- 8. options are typed as Ollama types them ---------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"mirostat": "x"},
        {"temperature": "hot"},
        {"num_ctx": 2048.5},
        {"use_mmap": 1},
        {"stop": "\n"},
        {"main_gpu": [0]},
    ],
)
async def test_options_of_the_wrong_type_are_a_400_at_the_gateway(
    deployment: Deployment, options: dict[str, Any]
) -> None:
    key = await deployment.key(models=["llama3.2"])
    before = mock_requests(deployment)
    for path, body in (
        ("/api/chat", {**CHAT, "options": options}),
        ("/v1/chat/completions", {"model": "llama3.2", "messages": MESSAGES, "options": options}),
    ):
        refused = post(deployment.url, key, path, body)
        assert refused.status_code == 400, (path, refused.text)
        assert "options" in refused.text
    assert mock_requests(deployment) == before


# -- 9. native embeddings are counted ------------------------------------------------------


async def test_native_embeddings_are_counted_and_budgeted(deployment: Deployment) -> None:
    key = await deployment.key(models=["all-minilm"])
    await admin.set_budget(deployment.engine, key[:12], total=100)
    text = "the quick brown fox jumps over the lazy dog"
    statuses = []
    for _ in range(20):
        answer = post(deployment.url, key, "/api/embed", {"model": "all-minilm", "input": text})
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            assert answer.json()["prompt_eval_count"] > 0
    assert 429 in statuses
    served = statuses.index(429)
    assert 1 <= served <= 10
    rows = await audit_rows(deployment.engine, key, 20)
    counted = [row.tokens_in for row in rows if row.status == 200]
    assert len(counted) == served
    assert all(tokens > 0 for tokens in counted)
    assert sum(counted) <= 100


# -- 10. a stream that fails half-way is audited as failed ---------------------------------


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
async def test_a_stream_that_fails_half_way_is_audited_as_failed(
    rig: RigFactory, deployment: Deployment, path: str
) -> None:
    r = rig("--token-rate", "0", "--response-tokens", "40")
    r.faults(error_after=3, error_message="llama runner crashed")
    key = await deployment.key(allow_all=True)
    with httpx.stream(
        "POST",
        r.gateway.url + path,
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "llama3.2", "messages": MESSAGES, "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        text = response.read().decode()
    assert "The model backend failed during the stream." in text
    rows = await audit_rows(deployment.engine, key, 1)
    assert [row.status for row in rows] == [502]
    assert rows[0].request_id == request_id
    logged = [json.loads(line) for line in r.gateway.output().splitlines() if line.startswith("{")]
    backend = [e for e in logged if e.get("event") == "backend_stream_error"]
    assert backend, "the backend's error was not logged"
    assert backend[0]["request_id"] == request_id
    assert backend[0]["key_prefix"] == key[:12]
    line = next(e for e in logged if e.get("event") == "request" and e["request_id"] == request_id)
    assert (line["status"], line["error"]) == (502, "upstream_unavailable")


# -- 11. small things ----------------------------------------------------------------------


async def test_every_spelling_of_an_admin_path_is_the_same_403(deployment: Deployment) -> None:
    key = await deployment.key(allow_all=True)
    answers = [
        httpx.post(
            deployment.url + path,
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "llama3.2"},
        )
        for path in ("/api/pull", "/API/PULL", "/Api/Pull", "/api/PULL")
    ]
    assert {a.status_code for a in answers} == {403}
    assert len({a.content for a in answers}) == 1


async def test_a_key_sent_as_a_model_is_not_kept(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    secret = key  # the tenant pastes its key where the model goes
    assert post(deployment.url, key, "/api/chat", {**CHAT, "model": secret}).status_code == 403
    rows = await audit_rows(deployment.engine, key, 1)
    assert len(rows) == 1
    assert rows[0].model == secret[:12].lower() + "…:latest"
    assert key[12:].lower() not in (rows[0].model or "").lower()
