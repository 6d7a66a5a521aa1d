"""Several choices, batches of prompts and log probabilities, through real processes
(the gateway in both storage modes, the mock Ollama), read by the clients people use:
the `openai` SDK, LangChain's `OpenAI(...).batch` and the `ollama` client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import httpx2
import ollama
import openai
import pytest
from langchain_openai import OpenAI

from nz_core.limits import Limits
from tests.e2e.conftest import Deployment

CHAT = "llama3.2"
TOKENS = 12  # the e2e mock's answer length
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


def client(deployment: Deployment, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=deployment.url + "/v1", api_key=key, max_retries=0)


async def test_chat_choices_with_logprobs_whole_and_streamed(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT])
    with client(deployment, key) as sdk:
        whole = sdk.chat.completions.create(
            model=CHAT, messages=MESSAGES, n=3, seed=5, logprobs=True, top_logprobs=2
        )
        chunks = list(
            sdk.chat.completions.create(
                model=CHAT,
                messages=MESSAGES,
                n=3,
                seed=5,
                logprobs=True,
                top_logprobs=2,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert [c.index for c in whole.choices] == [0, 1, 2]
    contents = [c.message.content or "" for c in whole.choices]
    assert len(set(contents)) == 3  # each choice samples with its own seed
    for choice in whole.choices:
        assert choice.logprobs is not None
        assert choice.logprobs.content is not None
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
        assert all(t.top_logprobs[0].token == t.token for t in choice.logprobs.content)
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 3 * TOKENS

    # Streamed, each chunk says whose it is; gathered by index it is the same answer.
    streamed: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    for chunk in chunks:
        for delta in chunk.choices:
            streamed[delta.index] = streamed.get(delta.index, "") + (delta.delta.content or "")
            if delta.logprobs is not None and delta.logprobs.content:
                tokens.setdefault(delta.index, []).extend(t.token for t in delta.logprobs.content)
    assert [streamed[i] for i in range(3)] == contents
    assert ["".join(tokens[i]) for i in range(3)] == contents
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3 * TOKENS
    assert len({c.id for c in chunks}) == 1


async def test_batched_completions_with_logprobs(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT])
    prompts = ["Once upon a time", "The gateway", "In the morning"]
    with client(deployment, key) as sdk:
        batch = sdk.completions.create(model=CHAT, prompt=prompts, n=2, seed=1, logprobs=2)
        singles = [
            sdk.completions.create(model=CHAT, prompt=p, seed=1).choices[0].text for p in prompts
        ]
        stream = list(
            sdk.completions.create(
                model=CHAT, prompt=prompts, max_tokens=4, stream=True, logprobs=0
            )
        )
    # Prompt-major: choice 2k and 2k+1 answer prompt k, the first with the same seed.
    assert [c.index for c in batch.choices] == list(range(6))
    assert [batch.choices[2 * k].text for k in range(3)] == singles
    assert all(batch.choices[2 * k + 1].text != singles[k] for k in range(3))
    for choice in batch.choices:
        logprobs = choice.logprobs
        assert logprobs is not None
        assert logprobs.tokens is not None
        assert logprobs.text_offset is not None
        assert "".join(logprobs.tokens) == choice.text
        assert logprobs.text_offset == [
            len("".join(logprobs.tokens[:i])) for i in range(len(logprobs.tokens))
        ]
        assert all(len(top) == 2 for top in logprobs.top_logprobs or [])
    assert batch.usage is not None
    assert batch.usage.completion_tokens == 6 * TOKENS

    texts: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.text:
                assert choice.logprobs is not None
                assert choice.logprobs.top_logprobs == [{}]  # logprobs=0: no alternatives
    assert sorted(texts) == [0, 1, 2]
    assert all(len(text.split()) <= 4 for text in texts.values())  # each call was capped


async def test_langchain_batches_in_one_request(deployment: Deployment) -> None:
    key = await deployment.key(models=[CHAT])
    sent: list[bytes] = []
    http = httpx2.Client(event_hooks={"request": [lambda request: sent.append(request.read())]})
    llm = OpenAI(
        base_url=deployment.url + "/v1",
        api_key=key,  # type: ignore[arg-type]
        model=CHAT,
        max_tokens=8,
        http_client=http,
    )
    try:
        prompts: list[Any] = ["Tell me a story", "Name a colour", "Count to three"]
        batched = llm.batch(prompts)
        assert len(sent) == 1  # the batch went as one request of three prompts
        assert json.loads(sent[0])["prompt"] == prompts
        assert batched == [llm.invoke(p) for p in prompts]
        assert len(set(batched)) == 3
        result = llm.generate(prompts)
        assert result.llm_output is not None
        assert result.llm_output["token_usage"]["completion_tokens"] == 3 * 8
    finally:
        http.close()


async def test_a_fan_out_that_does_not_fit_the_key_is_a_rate_limit(
    deployment: Deployment,
) -> None:
    tenant = await deployment.tenant(models=[CHAT])
    key = await deployment.key(tenant, limits=Limits(rpm=5, concurrent=2))
    with client(deployment, key) as sdk:
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model=CHAT, messages=MESSAGES, n=3)
        assert refused.value.code == "concurrency_exceeded"
        raw = sdk.chat.completions.with_raw_response.create(model=CHAT, messages=MESSAGES, n=2)
        assert len(raw.parse().choices) == 2
        assert raw.headers["x-ratelimit-remaining-requests"] == "3"  # the 429 took none
        with pytest.raises(openai.BadRequestError) as too_many:
            sdk.chat.completions.create(model=CHAT, messages=MESSAGES, n=21)
        assert too_many.value.param == "n"
        with pytest.raises(openai.BadRequestError) as top:
            sdk.chat.completions.create(
                model=CHAT, messages=MESSAGES, logprobs=True, top_logprobs=21
            )
        assert top.value.param == "top_logprobs"


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
async def test_native_logprobs_pass_through(deployment: Deployment, path: str) -> None:
    key = await deployment.key(models=[CHAT])
    headers = {"Authorization": f"Bearer {key}"}
    body: dict[str, Any] = {"model": CHAT, "logprobs": True, "top_logprobs": 3}
    body |= {"messages": MESSAGES} if path == "/api/chat" else {"prompt": "Say hello"}
    with httpx.Client(base_url=deployment.url, headers=headers, timeout=30) as http:
        whole = http.post(path, json={**body, "stream": False}).json()
        lines = [line for line in http.post(path, json=body).text.splitlines() if line]
        refused = http.post(path, json={**body, "top_logprobs": 21})
    assert len(whole["logprobs"]) == TOKENS
    assert all(len(e["top_logprobs"]) == 3 for e in whole["logprobs"])
    streamed = [
        e for line in lines for e in httpx.Response(200, content=line).json().get("logprobs", [])
    ]
    assert streamed == whole["logprobs"]
    assert refused.status_code == 400
    assert "top_logprobs" in refused.json()["error"]
    with ollama.Client(host=deployment.url, headers=headers) as native:
        answer = native.chat(model=CHAT, messages=MESSAGES, logprobs=True, top_logprobs=1)
    assert answer.logprobs is not None
    assert "".join(e.token for e in answer.logprobs) == answer.message.content
