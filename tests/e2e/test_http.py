"""HTTP behaviour at the byte level: refusals, input handling, request ids (SPEC §6)."""

from __future__ import annotations

import json

import httpx
import pytest

from nz_core import admin
from nz_core.keys import generate_key
from nz_core.scopes import Scope
from tests.e2e.conftest import Deployment

CHAT_BODY = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


def post(
    deployment: Deployment, path: str, key: str | None, body: object, **kw: object
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(deployment.url + path, headers=headers, json=body, timeout=10, **kw)  # type: ignore[arg-type]


async def test_every_key_failure_is_one_401_body_per_surface(deployment: Deployment) -> None:
    good = await deployment.key(models=["llama3.2"])
    revoked = await deployment.key(models=["llama3.2"])
    await admin.revoke_key(deployment.engine, revoked[:12])
    wrong_secret = good[:12] + generate_key()[12:]
    # Warm the cache with the good key, so a wrong secret meets a cached prefix too.
    assert post(deployment, "/v1/chat/completions", good, CHAT_BODY).status_code == 200
    variants: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer nz_short"},
        {"Authorization": "Basic " + good},
        {"Authorization": "Bearer " + generate_key()},  # unknown prefix
        {"Authorization": "Bearer " + wrong_secret},
        {"Authorization": "Bearer " + revoked},
        {"x-api-key": "nope"},
    ]
    for path, body in (("/v1/chat/completions", CHAT_BODY), ("/api/chat", CHAT_BODY)):
        bodies = set()
        for headers in variants:
            response = httpx.post(deployment.url + path, headers=headers, json=body, timeout=10)
            assert response.status_code == 401, (path, headers)
            bodies.add(response.content)
        assert len(bodies) == 1, bodies
    assert json.loads(bodies.pop()) == {"error": "unauthorized"}
    challenged = httpx.post(deployment.url + "/v1/chat/completions", json=CHAT_BODY)
    assert challenged.headers["www-authenticate"].startswith("Bearer")
    x_api_key = httpx.post(
        deployment.url + "/v1/chat/completions", headers={"x-api-key": good}, json=CHAT_BODY
    )
    assert x_api_key.status_code == 200


async def test_disallowed_and_nonexistent_models_get_identical_403s(
    deployment: Deployment,
) -> None:
    key = await deployment.key(models=["llama3.2"])
    for path in ("/v1/chat/completions", "/api/chat", "/api/generate"):
        body = {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}
        installed = post(deployment, path, key, {**body, "model": "mistral"})
        missing = post(deployment, path, key, {**body, "model": "does-not-exist"})
        assert installed.status_code == missing.status_code == 403
        assert installed.content == missing.content
    shown = [post(deployment, "/api/show", key, {"model": m}) for m in ("mistral", "ghost")]
    assert shown[0].status_code == shown[1].status_code == 403
    assert shown[0].content == shown[1].content
    listed = [
        httpx.get(f"{deployment.url}/v1/models/{m}", headers={"Authorization": f"Bearer {key}"})
        for m in ("mistral", "ghost")
    ]
    assert listed[0].status_code == listed[1].status_code == 403
    assert listed[0].content == listed[1].content


async def test_admin_endpoints_are_refused_and_never_forwarded(deployment: Deployment) -> None:
    key = await deployment.key(allow_all=True)
    before = httpx.get(deployment.mock.url + "/_mock/stats").json()["requests"]
    auth = {"Authorization": f"Bearer {key}"}
    for method, path in [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("HEAD", "/api/blobs/sha256:" + "0" * 64),
        ("POST", "/api/blobs/sha256:" + "0" * 64),
        ("GET", "/api/unknown/path"),
    ]:
        response = httpx.request(method, deployment.url + path, headers=auth, json={"model": "x"})
        assert response.status_code == 403, path
        if method != "HEAD":
            assert response.json()["error"]
    after = httpx.get(deployment.mock.url + "/_mock/stats").json()["requests"]
    for path in ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"):
        assert after.get(path, 0) == before.get(path, 0), path
    assert not any(p.startswith("/api/blobs") for p in after)


async def test_input_handling(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    auth = {"Authorization": f"Bearer {key}"}
    # curl -d sends a form content type; Ollama parses JSON anyway, and so do we.
    form = httpx.post(
        deployment.url + "/api/chat",
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
        content=json.dumps({**CHAT_BODY, "stream": False}),
    )
    assert form.status_code == 200
    assert form.json()["done"] is True
    for path in ("/v1/chat/completions", "/api/chat"):
        for content in (b"{not json", b"[1, 2]", b""):
            bad = httpx.post(deployment.url + path, headers=auth, content=content)
            assert bad.status_code == 400, (path, content)
            assert "Traceback" not in bad.text
        missing = post(deployment, path, key, {"messages": CHAT_BODY["messages"]})
        assert missing.status_code == 400
    openai_shape = httpx.post(deployment.url + "/v1/chat/completions", headers=auth, content=b"{")
    assert set(openai_shape.json()["error"]) == {"message", "type", "param", "code"}
    assert openai_shape.json()["error"]["code"] == "invalid_request"
    assert set(httpx.post(deployment.url + "/api/chat", headers=auth, content=b"{").json()) == {
        "error"
    }


async def test_oversized_bodies_get_413(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    auth = {"Authorization": f"Bearer {key}"}
    big = b'{"model":"llama3.2","prompt":"' + b"x" * (16 * 1024 * 1024) + b'"}'
    for path in ("/v1/completions", "/api/generate"):
        declared = httpx.post(deployment.url + path, headers=auth, content=big, timeout=30)
        assert declared.status_code == 413

        def chunks() -> object:
            for start in range(0, len(big), 1 << 20):
                yield big[start : start + (1 << 20)]

        streamed = httpx.post(deployment.url + path, headers=auth, content=chunks(), timeout=30)  # type: ignore[arg-type]
        assert streamed.status_code == 413
    assert "request_too_large" in declared.text or "exceeds" in declared.text


async def test_request_ids(deployment: Deployment) -> None:
    key = await deployment.key(models=["llama3.2"])
    auth = {"Authorization": f"Bearer {key}"}
    echoed = httpx.get(
        deployment.url + "/v1/models", headers={**auth, "X-Request-ID": "client.id-42_x"}
    )
    assert echoed.headers["x-request-id"] == "client.id-42_x"
    for unsafe in ("has space", "x" * 65, "semi;colon", "é"):
        replaced = httpx.get(
            deployment.url + "/v1/models",
            headers=[*auth.items(), ("X-Request-ID", unsafe.encode())],
        )
        assert replaced.headers["x-request-id"] != unsafe
        assert len(replaced.headers["x-request-id"]) == 32
    for response in (
        httpx.get(deployment.url + "/nowhere"),
        httpx.get(deployment.url + "/v1/models"),
        httpx.post(deployment.url + "/api/pull"),
        httpx.get(deployment.url + "/healthz"),
    ):
        assert len(response.headers["x-request-id"]) == 32


async def test_scopes_routes_and_methods(deployment: Deployment) -> None:
    chat_only = await deployment.key(allow_all=True, scopes=frozenset({Scope.CHAT}))
    embedding = post(deployment, "/api/embed", chat_only, {"model": "all-minilm", "input": "x"})
    assert embedding.status_code == 403
    assert "embeddings" in embedding.json()["error"]
    listing = httpx.get(
        deployment.url + "/api/tags", headers={"Authorization": f"Bearer {chat_only}"}
    )
    assert listing.status_code == 200  # any valid key may list
    wrong_method = httpx.get(deployment.url + "/api/chat")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert httpx.delete(deployment.url + "/healthz").headers["allow"] == "GET, HEAD"
    assert httpx.post(deployment.url + "/").status_code == 405
    not_found = httpx.get(deployment.url + "/v1/nothing")
    assert not_found.status_code == 404
    assert not_found.json()["error"]["code"] == "not_found"
    assert httpx.get(deployment.url + "/v1/modelsx").status_code == 404
    root = httpx.get(deployment.url + "/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    head = httpx.head(
        deployment.url + "/api/version", headers={"Authorization": f"Bearer {chat_only}"}
    )
    assert head.status_code == 200
    assert head.content == b""


async def test_health_and_readiness(deployment: Deployment) -> None:
    assert httpx.get(deployment.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(deployment.url + "/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["backend"] == "ok"
    assert checks["state_store"] == ("ok" if deployment.mode == "production" else "in-process")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_the_backend_never_sees_the_clients_key(deployment: Deployment, path: str) -> None:
    """The mock would reject nothing, so check what reached it: its request log has no
    Authorization header to show, but the gateway must not have sent one either."""
    key = await deployment.key(models=["llama3.2"])
    response = post(deployment, path, key, {**CHAT_BODY, "stream": False})
    assert response.status_code == 200
    assert key not in deployment.gateway.output()
