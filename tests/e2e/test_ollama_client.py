"""The real `ollama` client against the gateway's native surface (WIRE.md §1, §5)."""

from __future__ import annotations

import ollama
import pytest

from tests.e2e.conftest import Deployment

CHAT = "llama3.2"
EMBED = "all-minilm"


def client(deployment: Deployment, key: str) -> ollama.Client:
    return ollama.Client(host=deployment.url, headers={"Authorization": f"Bearer {key}"})


async def test_chat_streamed_and_whole(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT])
    with client(deployment, key) as api:
        whole = api.chat(model=CHAT, messages=[{"role": "user", "content": "Hello"}])
        frames = list(
            api.chat(model=CHAT, messages=[{"role": "user", "content": "Hello"}], stream=True)
        )
    assert whole.done
    assert whole.message.content
    assert whole.eval_count == 12
    assert all(frame.message is not None for frame in frames)
    assert frames[-1].done
    assert frames[-1].eval_count == 12
    assert "".join(f.message.content or "" for f in frames) == whole.message.content


async def test_generate_embed_and_legacy_embeddings(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT, EMBED])
    with client(deployment, key) as api:
        generated = api.generate(model=CHAT, prompt="Once", options={"num_predict": 3})
        streamed = list(api.generate(model=CHAT, prompt="Once", stream=True))
        embedded = api.embed(model=EMBED, input=["a", "b"])
        legacy = api.embeddings(model=EMBED, prompt="a")
    assert generated.eval_count == 3
    assert generated.done_reason == "length"
    assert streamed[-1].done
    assert len(embedded.embeddings) == 2
    assert len(embedded.embeddings[0]) == 384
    assert len(legacy.embedding) == 384


async def test_list_show_ps_version_are_filtered(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT, "acme/coder:1b"])
    with client(deployment, key) as api:
        listed = sorted(model.model or "" for model in api.list().models)
        assert listed == ["acme/coder:1b", "llama3.2:latest"]
        shown = api.show(CHAT)
        assert shown.modelinfo
        api.chat(model=CHAT, messages=[{"role": "user", "content": "load it"}])
        running = [model.model for model in api.ps().models]
        assert set(running) <= {"llama3.2:latest", "acme/coder:1b"}
        # ollama-python has no version() call; its own transport does the request.
        version = api._client.get("/api/version")
        assert version.status_code == 200
        assert version.json()["version"]
        with pytest.raises(ollama.ResponseError) as denied:
            api.show("mistral")
        assert denied.value.status_code == 403


async def test_refusals(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT])
    with client(deployment, key) as api:
        for model in ("mistral", "no-such-model"):
            with pytest.raises(ollama.ResponseError) as denied:
                api.chat(model=model, messages=[{"role": "user", "content": "hi"}])
            assert denied.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as blocked:
            api.pull("llama3.2")
        assert blocked.value.status_code == 403
    with client(deployment, "nz_wrong") as api, pytest.raises(ollama.ResponseError) as bad:
        api.list()
    assert bad.value.status_code == 401
    assert bad.value.error == "unauthorized"
