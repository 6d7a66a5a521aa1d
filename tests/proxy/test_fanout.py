"""Requests that fan out (``n`` choices, batches of prompts) through the whole lifecycle,
in process and in both storage modes: one backend call per choice, each capped and
reserved like a request; one answer, one settlement, one audit row; a fan-out that does
not fit is refused whole with nothing left reserved; a call failing mid-way fails the
request as a single stream fails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from nz_core.budgets import estimate_prompt_tokens
from nz_core.limits import Limits
from nz_proxy.translation.native import prompt_text_bytes
from tests.inprocess import Answer, FakeBackend, Running, call, gateway, ndjson
from tests.proxy.test_lifecycle import audited, settlements, slot_is_free, storage
from tests.sse import SseParser

__all__ = ["storage"]  # the fixture, shared with the lifecycle tests

CHAT: Final = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
PROMPT_TOKENS: Final = 5  # what the fake backend reports per call


def words_for(body: dict[str, Any]) -> list[str]:
    """A distinct answer per call: its prompt (or "chat") and its seed."""
    seed = (body.get("options") or {}).get("seed", "-")
    return [str(body.get("prompt", "chat")), f" s{seed}", " end"]


def frames_for(body: dict[str, Any], words: list[str]) -> list[dict[str, Any]]:
    key = "response" if "prompt" in body else "message"
    frames: list[dict[str, Any]] = []
    for word in words:
        text: Any = word if key == "response" else {"role": "assistant", "content": word}
        frames.append({"model": "llama3.2", key: text, "done": False})
    final: Any = "" if key == "response" else {"role": "assistant", "content": ""}
    frames.append(
        {
            "model": "llama3.2",
            key: final,
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": PROMPT_TOKENS,
            "eval_count": len(words),
        }
    )
    return frames


def backend(
    *, cut_prompt: str | None = None, refuse_seed: int | None = None, pause: float = 0
) -> Any:
    """Answers each call with its own words, streamed or whole. The call whose prompt
    is ``cut_prompt`` drops its connection after one frame; the one with seed
    ``refuse_seed`` is refused with Ollama's 500."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = json.loads(await request.read())
        seed = (body.get("options") or {}).get("seed")
        if refuse_seed is not None and seed == refuse_seed:
            return web.json_response({"error": "model runner crashed"}, status=500)
        words = words_for(body)
        frames = frames_for(body, words)
        if body.get("stream") is False:
            await asyncio.sleep(pause)
            whole = dict(frames[-1])
            if "prompt" in body:
                whole["response"] = "".join(words)
            else:
                whole["message"] = {"role": "assistant", "content": "".join(words)}
            return web.json_response(whole)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for sent, frame in enumerate(frames):
            if cut_prompt is not None and body.get("prompt") == cut_prompt and sent == 1:
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(ndjson([frame]))
            await asyncio.sleep(pause)
        await response.write_eof()
        return response

    return handler


async def post(gw: Running, key: str, path: str, body: dict[str, Any], **kwargs: Any) -> Answer:
    return await call(
        gw.app, "POST", path, headers={"Authorization": f"Bearer {key}"}, body=body, **kwargs
    )


def estimate(gw: Running, body: dict[str, Any]) -> int:
    image_tokens = gw.gateway.settings.budget_image_tokens
    return estimate_prompt_tokens(*prompt_text_bytes(body), image_tokens=image_tokens)


def sse_chunks(body: bytes) -> list[dict[str, Any]]:
    payloads = SseParser().feed(body)
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def by_index(chunks: list[dict[str, Any]], field: str) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            piece = choice["delta"].get("content") if field == "delta" else choice["text"]
            texts[choice["index"]] = texts.get(choice["index"], "") + (piece or "")
    return texts


async def test_n_choices_are_n_capped_calls_reserved_and_settled_as_one(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    async with (
        FakeBackend(backend()) as fake,
        gateway(fake.url, tmp_path, **storage) as gw,
    ):
        key = await gw.new_key(limits=Limits(rpm=10, concurrent=3), daily=100_000)
        request = {**CHAT, "n": 3, "max_tokens": 50, "seed": 11}
        async with settlements(gw) as settled:
            answer = await post(gw, key, "/v1/chat/completions", request)
        assert answer.status == 200, answer.body
        body = answer.json()
        contents = [c["message"]["content"] for c in body["choices"]]
        assert [c["index"] for c in body["choices"]] == [0, 1, 2]
        assert contents == ["chat s11 end", "chat s12 end", "chat s13 end"]
        assert body["usage"] == {"prompt_tokens": 15, "completion_tokens": 9, "total_tokens": 24}
        sent = [json.loads(raw) for _, _, raw in fake.received]
        assert len(sent) == 3
        assert all(s["options"]["num_predict"] == 50 for s in sent)  # each call capped
        # Admission counted three requests and reserved three prompts and three caps.
        reserved = 3 * (estimate(gw, sent[0]) + 50)
        assert answer.headers["x-budget-tokens-remaining"] == str(100_000 - reserved)
        assert answer.headers["x-ratelimit-remaining-requests"] == "7"
        assert list(settled.values()) == [1]
        rows = [r for r in await audited(gw) if r.key_prefix == key[:12]]
        assert [(r.status, r.tokens_in, r.tokens_out) for r in rows] == [(200, 15, 9)]
        after = await post(gw, key, "/v1/chat/completions", {**CHAT, "max_tokens": 10})
        # Settled at what the three used; the next reserves its own.
        own = estimate(gw, json.loads(fake.received[-1][2])) + 10
        assert after.headers["x-budget-tokens-remaining"] == str(100_000 - 24 - own)


async def test_a_fan_out_that_does_not_fit_is_a_429_and_holds_nothing(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    async with (
        FakeBackend(backend()) as fake,
        gateway(fake.url, tmp_path, **storage) as gw,
    ):
        key = await gw.new_key(limits=Limits(concurrent=2))
        wide = await post(gw, key, "/v1/chat/completions", {**CHAT, "n": 3})
        assert wide.status == 429
        assert wide.json()["error"]["code"] == "concurrency_exceeded"
        assert fake.received == []  # no call was made
        pair = await post(gw, key, "/v1/chat/completions", {**CHAT, "n": 2})
        assert pair.status == 200  # both slots were still free

        key = await gw.new_key(limits=Limits(rpm=4), daily=1_000)
        big = await post(gw, key, "/v1/chat/completions", {**CHAT, "n": 3, "max_tokens": 400})
        assert big.status == 429
        assert big.json()["error"]["code"] == "budget_exhausted"
        three = await post(gw, key, "/v1/chat/completions", {**CHAT, "n": 3, "max_tokens": 100})
        assert three.status == 200
        # The refused fan-out reserved nothing and counted nothing: 4 - 3 requests left 1.
        assert three.headers["x-ratelimit-remaining-requests"] == "1"
        reserved = 3 * (estimate(gw, json.loads(fake.received[-1][2])) + 100)
        assert three.headers["x-budget-tokens-remaining"] == str(1_000 - reserved)
        rpm = await post(gw, key, "/v1/chat/completions", {**CHAT, "n": 2})
        assert (rpm.status, rpm.json()["error"]["code"]) == (429, "rpm_exceeded")


async def test_a_streamed_fan_out_merges_the_choices_and_sums_the_usage(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    async with (
        FakeBackend(backend(pause=0.002)) as fake,
        gateway(fake.url, tmp_path, **storage) as gw,
    ):
        key = await gw.new_key(limits=Limits(concurrent=4), daily=100_000)
        request = {
            "model": "llama3.2",
            "prompt": ["one", "two"],
            "n": 2,
            "seed": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with settlements(gw) as settled:
            answer = await post(gw, key, "/v1/completions", request)
        assert answer.status == 200
        chunks = sse_chunks(answer.body)
        assert by_index(chunks, "text") == {
            0: "one s1 end",
            1: "one s2 end",
            2: "two s1 end",
            3: "two s2 end",
        }
        finishes = [
            choice["index"] for c in chunks for choice in c["choices"] if choice["finish_reason"]
        ]
        assert sorted(finishes) == [0, 1, 2, 3]
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 20,
            "completion_tokens": 12,
            "total_tokens": 32,
        }
        assert list(settled.values()) == [1]
        rows = [r for r in await audited(gw) if r.key_prefix == key[:12]]
        assert [(r.status, r.tokens_in, r.tokens_out) for r in rows] == [(200, 20, 12)]
        assert await slot_is_free(gw, key)


async def test_a_call_that_breaks_mid_stream_fails_the_request_once(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    async with (
        FakeBackend(backend(cut_prompt="two", pause=0.002)) as fake,
        gateway(fake.url, tmp_path, **storage) as gw,
    ):
        key = await gw.new_key(limits=Limits(concurrent=2), daily=100_000)
        request = {"model": "llama3.2", "prompt": ["one", "two"], "stream": True}
        async with settlements(gw) as settled:
            answer = await post(gw, key, "/v1/completions", request)
        assert answer.status == 200
        text = answer.body.decode()
        assert text.count('"error":') == 1
        assert "The model backend failed during the stream." in text
        assert not text.rstrip().endswith("[DONE]")
        assert list(settled.values()) == [1]
        [row] = [r for r in await audited(gw) if r.key_prefix == key[:12]]
        assert row.status == 502
        # The broken call counts its prompt estimate and the one frame it sent; the other
        # counts what it used (all of it, or as far as it got before it was dropped).
        cut = estimate(gw, {"model": "llama3.2", "prompt": "two", "stream": True})
        assert row.tokens_in in (
            cut + PROMPT_TOKENS,
            cut + estimate(gw, request | {"prompt": "one"}),
        )
        # (The broken call's one frame is lost when its connection drops before the
        # gateway reads it: aiohttp raises at once and drops what it buffered.)
        assert row.tokens_out <= 1 + 3
        assert await slot_is_free(gw, key)


async def test_a_call_refused_by_the_backend_fails_the_request_and_drops_the_rest(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    async with (
        FakeBackend(backend(refuse_seed=8, pause=0.3)) as fake,
        gateway(fake.url, tmp_path, **storage) as gw,
    ):
        key = await gw.new_key(limits=Limits(concurrent=3))
        async with settlements(gw) as settled:
            answer = await post(gw, key, "/v1/chat/completions", {**CHAT, "n": 3, "seed": 7})
        # Refused at once, without waiting for the two slow calls.
        assert answer.status == 502
        assert "model runner crashed" in answer.json()["error"]["message"]
        assert list(settled.values()) == [1]
        rows = [r for r in await audited(gw) if r.key_prefix == key[:12]]
        assert [(r.status, r.tokens_in, r.tokens_out) for r in rows] == [(502, 0, 0)]
        assert await slot_is_free(gw, key)


async def test_a_client_leaving_a_fan_out_is_settled_once_as_499(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    async with (
        FakeBackend(backend(pause=0.05)) as fake,
        gateway(fake.url, tmp_path, **storage) as gw,
    ):
        key = await gw.new_key(limits=Limits(concurrent=3))
        async with settlements(gw) as settled:
            answer = await post(
                gw,
                key,
                "/v1/chat/completions",
                {**CHAT, "n": 3, "stream": True},
                leave_after_chunks=2,
            )
        assert answer.status == 200
        assert list(settled.values()) == [1]
        rows = [r for r in await audited(gw) if r.key_prefix == key[:12]]
        assert [r.status for r in rows] == [499]
        assert await slot_is_free(gw, key)


async def test_more_choices_than_the_maximum_is_a_400_before_admission(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    async with (
        FakeBackend(backend()) as fake,
        gateway(fake.url, tmp_path, max_choices=4, **storage) as gw,
    ):
        key = await gw.new_key(limits=Limits(rpm=1))
        too_many = await post(gw, key, "/v1/chat/completions", {**CHAT, "n": 5})
        assert too_many.status == 400
        assert too_many.json()["error"]["param"] == "n"
        batch = await post(
            gw, key, "/v1/completions", {"model": "llama3.2", "prompt": ["a", "b", "c"], "n": 2}
        )
        assert batch.status == 400
        assert batch.json()["error"]["param"] == "prompt"
        assert fake.received == []
        fits = await post(
            gw, key, "/v1/completions", {"model": "llama3.2", "prompt": ["a", "b"], "n": 2}
        )
        assert fits.status == 429  # rpm 1: four calls never fit a key of one a minute
        assert fits.json()["error"]["code"] == "rpm_exceeded"
