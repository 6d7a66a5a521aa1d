"""Admin endpoints: implemented and counted, so gateway tests can prove none is forwarded."""

from __future__ import annotations

import hashlib

import httpx
import ollama
import pytest

from .frames import ndjson_frames


def _names(client: ollama.Client) -> set[str]:
    return {m.model or "" for m in client.list().models}


def test_pull_streams_progress_and_installs_the_model(
    http: httpx.Client, client: ollama.Client
) -> None:
    assert "phi3:mini" not in _names(client)
    response = http.post("/api/pull", json={"model": "phi3:mini"})
    assert response.headers["content-type"] == "application/x-ndjson"
    frames = ndjson_frames(response.content)
    statuses = [f["status"] for f in frames]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [f for f in frames if f["status"].startswith("pulling ") and "digest" in f]
    assert layers
    assert "completed" not in layers[0]
    assert layers[-1]["completed"] == layers[-1]["total"]
    assert layers[0]["digest"].startswith("sha256:")
    listed = client.list().models
    assert listed[0].model == "phi3:mini"  # newest first
    assert client.show("phi3:mini").details.family == "phi3"  # type: ignore[union-attr]


def test_pull_with_the_client_and_not_streamed(http: httpx.Client, client: ollama.Client) -> None:
    progress = list(client.pull("gemma3:4b", stream=True))
    assert progress[-1].status == "success"
    assert "gemma3:4b" in _names(client)
    response = http.post("/api/pull", json={"model": "bge-m3", "stream": False})
    assert response.json() == {"status": "success"}
    assert client.show("bge-m3").capabilities == ["embedding"]


def test_push(http: httpx.Client) -> None:
    frames = ndjson_frames(http.post("/api/push", json={"model": "llama3.2"}).content)
    assert frames[0] == {"status": "retrieving manifest"}
    assert frames[-1] == {"status": "success"}
    missing = http.post("/api/push", json={"model": "nope"})
    assert missing.status_code == 404


def test_create_copy_delete(http: httpx.Client, client: ollama.Client) -> None:
    created = client.create(model="mine:v1", from_="llama3.2")
    assert created.status == "success"
    assert client.show("mine:v1").details.family == "llama"  # type: ignore[union-attr]

    copied = http.post("/api/copy", json={"source": "mine:v1", "destination": "mine:v2"})
    assert (copied.status_code, copied.content) == (200, b"")
    assert {"mine:v1", "mine:v2"} <= _names(client)
    assert http.post("/api/copy", json={"source": "nope", "destination": "x"}).status_code == 404

    deleted = http.request("DELETE", "/api/delete", json={"model": "mine:v1"})
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert "mine:v1" not in _names(client)
    again = http.request("DELETE", "/api/delete", json={"model": "mine:v1"})
    assert (again.status_code, again.json()) == (404, {"error": "model 'mine:v1' not found"})
    with pytest.raises(ollama.ResponseError):
        client.delete("mine:v1")


def test_blobs(http: httpx.Client) -> None:
    data = b"some weights"
    digest = hashlib.sha256(data).hexdigest()
    path = f"/api/blobs/sha256:{digest}"
    assert http.head(path).status_code == 404
    assert http.post(path, content=data).status_code == 201
    assert http.head(path).status_code == 200
    assert http.post(path, content=data).status_code == 200
    wrong = http.post(f"/api/blobs/sha256:{'0' * 64}", content=data)
    assert wrong.status_code == 400
    assert "digest mismatch" in wrong.json()["error"]
    assert http.head("/api/blobs/md5:abc").status_code == 400


def test_admin_calls_are_counted(http: httpx.Client) -> None:
    http.post("/api/pull", json={"model": "x", "stream": False})
    http.post("/api/copy", json={"source": "llama3.2", "destination": "y"})
    http.request("DELETE", "/api/delete", json={"model": "y"})
    http.head(f"/api/blobs/sha256:{'a' * 64}")
    counts = http.get("/_mock/stats").json()["requests"]
    assert counts == {
        "/api/pull": 1,
        "/api/copy": 1,
        "/api/delete": 1,
        f"/api/blobs/sha256:{'a' * 64}": 1,
    }
