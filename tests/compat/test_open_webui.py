"""Open WebUI through the gateway (docs/OPEN_WEBUI.md), driven over its own HTTP API
and websocket the way its pages drive it: sign-up and sign-in, the model picker, a
streamed answer, a message from the chat page with everything it sets off, a
document embedded through ``/api/embed``, and the refusals its users see (401 for a
wrong or revoked key, 429 for a spent rpm or budget, each saying when to retry).
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Final

import pytest

from nz_core import admin
from nz_core.limits import Limits
from tests.compat.conftest import ADMIN, Stack
from tests.compat.openwebui import OpenWebUIProcess, WebUI
from tests.compat.session import BrowserSession

pytestmark = pytest.mark.compat

MODEL: Final = "llama3.2:latest"
ALLOWED: Final = ["all-minilm:latest", "llama3.2:latest"]  # what each test's tenant may use
LISTINGS: Final = {"/api/tags", "/api/ps", "/api/version", "/api/show", "/v1/models"}
WAIT: Final = r"retry in (\d+) s\."


async def test_sign_up_makes_the_admin_and_sign_in_opens_a_session(
    admin_ui: WebUI, open_webui: OpenWebUIProcess
) -> None:
    me = await admin_ui.http.get("/api/v1/auths/")
    assert me.json()["role"] == "admin"
    signed_in = await WebUI.sign_in(open_webui.url, ADMIN["email"], ADMIN["password"])
    assert signed_in.status_code == 200
    assert signed_in.json()["token"]
    wrong = await WebUI.sign_in(open_webui.url, ADMIN["email"], "not-the-password")
    assert wrong.status_code == 400


async def test_the_model_picker_shows_the_keys_models_and_spends_no_rpm(
    admin_ui: WebUI, stack: Stack, figures: dict[str, str]
) -> None:
    """Page loads list models (``/api/tags`` and ``/api/ps`` each time); with
    ``rpm=2`` both messages still go through, and the third is a 429 whose text says
    when to retry, passed on by Open WebUI with ``Retry-After``."""
    key = await stack.key(limits=Limits(rpm=2))
    await admin_ui.connect(stack.url, key)
    mark = stack.mark()
    loads = 5
    for _ in range(loads):
        assert sorted(await admin_ui.models()) == ALLOWED  # filtered by the gateway
        await asyncio.sleep(1.1)  # past Open WebUI's own one-second cache
    listings = [c for c in stack.calls(key, mark) if c["endpoint"] in LISTINGS]
    assert listings
    assert {c["status"] for c in listings} == {200}
    figures["listing calls per page load"] = (
        f"{len(listings) / loads:g} ({', '.join(sorted({c['endpoint'] for c in listings}))})"
    )

    for _ in range(2):
        answer, deltas = await admin_ui.stream(MODEL, "Hello")
        assert answer.status_code == 200, answer.text
        assert deltas
    refused, _ = await admin_ui.stream(MODEL, "Hello again")
    assert refused.status_code == 429
    detail = refused.json()["detail"]
    assert detail.startswith("Request rate limit reached; ")
    found = re.search(WAIT, detail)
    assert found, detail
    assert found.group(1) == refused.headers["retry-after"]
    figures["429 as Open WebUI shows it"] = detail


async def test_a_streamed_answer_arrives_in_pieces(admin_ui: WebUI, stack: Stack) -> None:
    key = await stack.key()
    await admin_ui.connect(stack.url, key)
    assert MODEL in await admin_ui.models()
    mark = stack.mark()
    answer, deltas = await admin_ui.stream(MODEL, "Tell me about gateways.")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert len(deltas) > 1
    (chat,) = [c for c in await stack.settled_calls(key, mark) if c["endpoint"] == "/api/chat"]
    assert (chat["status"], chat["stream"], chat["tokens_out"]) == (200, True, 24)


async def test_a_message_from_the_chat_page(
    admin_ui: WebUI, stack: Stack, figures: dict[str, str]
) -> None:
    """The first message of a chat, as the browser sends it: the answer streams over
    the websocket, and Open WebUI makes its other calls (title in parallel, tags,
    follow-ups, tool rounds) with its built-in tools in every prompt. With
    ``concurrent=3``, as docs/OPEN_WEBUI.md advises, none is refused."""
    key = await stack.key(limits=Limits(concurrent=3))
    await admin_ui.connect(stack.url, key)
    await admin_ui.models()
    mark, seq = stack.mark(), stack.mock_seq()
    async with BrowserSession(admin_ui.url, admin_ui.token) as tab:
        sent = await admin_ui.send(tab, MODEL, "What does an API gateway do?")
    assert sent.error is None
    assert len(sent.deltas) > 1  # streamed to the page piece by piece
    chats = [c for c in await stack.settled_calls(key, mark) if c["endpoint"] == "/api/chat"]
    assert {c["status"] for c in chats} == {200}
    prompts = sum(c["tokens_in"] for c in chats)
    tools = max(len(body.get("tools") or []) for body in stack.mock_bodies("/api/chat", seq))
    figures["/api/chat calls per message"] = str(len(chats))
    figures["prompt tokens per message"] = f"{prompts} ({[c['tokens_in'] for c in chats]})"
    figures["built-in tools in the prompt"] = str(tools)
    figures["most calls in flight at once"] = str(_overlap(chats))
    assert len(chats) >= 4  # the answer, its title, tags and follow-ups at least
    assert tools >= 30
    assert prompts > 10_000
    assert _overlap(chats) >= 2  # the title runs beside the answer


async def test_concurrent_one_breaks_the_first_message(
    admin_ui: WebUI, stack: Stack, figures: dict[str, str]
) -> None:
    """With ``concurrent=1`` the title generated beside the answer collides with it:
    one of the two is a 429 (the reason docs/OPEN_WEBUI.md asks for 2 or 3)."""
    key = await stack.key(limits=Limits(concurrent=1))
    await admin_ui.connect(stack.url, key)
    await admin_ui.models()
    mark = stack.mark()
    async with BrowserSession(admin_ui.url, admin_ui.token) as tab:
        sent = await admin_ui.send(tab, MODEL, "What does an API gateway do?")
    chats = [c for c in await stack.settled_calls(key, mark) if c["endpoint"] == "/api/chat"]
    refused = [c for c in chats if c["status"] == 429]
    assert refused
    assert {c["error"] for c in refused} == {"concurrency_exceeded"}
    if sent.error is not None:  # the answer lost the race: the page shows when to retry
        assert sent.error.startswith("Too many requests in flight; retry in ")
    figures["concurrent=1"] = (
        f"{len(refused)} of {len(chats)} /api/chat calls refused; the page showed: "
        f"{sent.error or 'the answer (a background task lost)'}"
    )


async def test_a_document_is_embedded_through_the_gateway(admin_ui: WebUI, stack: Stack) -> None:
    key = await stack.key()
    await admin_ui.connect(stack.url, key)
    mark, seq = stack.mark(), stack.mock_seq()
    text = "The neuronetz gateway keeps keys, limits and budgets in one place.\n"
    file_id = await admin_ui.upload("gateway.txt", text)
    async with asyncio.timeout(60):
        assert await admin_ui.processed(file_id) == "completed"
    embeds = [c for c in await stack.settled_calls(key, mark) if c["endpoint"] == "/api/embed"]
    assert embeds
    assert {(c["status"], c["model"]) for c in embeds} == {(200, "all-minilm:latest")}
    assert all(c["tokens_in"] > 0 for c in embeds)
    inputs = [body["input"] for body in stack.mock_bodies("/api/embed", seq)]
    assert any("keeps keys, limits and budgets" in str(i) for i in inputs)


async def test_a_spent_budget_says_when_it_resets(admin_ui: WebUI, stack: Stack) -> None:
    key = await stack.key(daily=5)  # less than the prompt itself: nothing fits
    await admin_ui.connect(stack.url, key)
    await admin_ui.models()
    refused, _ = await admin_ui.stream(MODEL, "Hello")
    assert refused.status_code == 429
    detail = refused.json()["detail"]
    assert re.fullmatch(
        r"Token budget exhausted for period 'day'; retry in [0-9a-z ]+, when it resets\.", detail
    ), detail
    async with BrowserSession(admin_ui.url, admin_ui.token) as tab:
        sent = await admin_ui.send(tab, MODEL, "Hello")
    assert sent.error is not None
    assert sent.error.startswith("Token budget exhausted for period 'day'; retry in ")


async def test_a_wrong_or_revoked_key_is_shown_as_unauthorized(
    admin_ui: WebUI, stack: Stack
) -> None:
    key = await stack.key()
    checked = await admin_ui.verify(stack.url, key[:12] + "x" * (len(key) - 12))
    assert checked.status_code == 500  # how Open WebUI reports a failed check
    assert "unauthorized" in checked.json()["detail"]
    assert (await admin_ui.verify(stack.url, key)).status_code == 200

    await admin_ui.connect(stack.url, key)
    assert MODEL in await admin_ui.models()  # cached by Open WebUI from here on
    await admin.revoke_key(stack.engine, key[:12], reason="compat")
    await asyncio.sleep(2)  # embedded mode polls revocations every second
    refused, _ = await admin_ui.stream(MODEL, "Hello")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "unauthorized"


def _overlap(calls: list[dict[str, object]]) -> int:
    """The most calls in flight at once, from their end times and latencies."""
    spans = []
    for call in calls:
        end = datetime.fromisoformat(str(call["timestamp"])).timestamp()
        spans.append((end - int(str(call["latency_ms"])) / 1000, end))
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
