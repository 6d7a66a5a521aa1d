"""The playground in a real browser (SPEC §12.2): Run is gated on a key, streamed answers
render token by token, the curl box is exactly what Run sent, errors show their status,
and the page never talks to any other origin."""

from __future__ import annotations

import itertools
import json
import shlex
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Request, Response, expect

from tests.browser.conftest import (
    Playground,
    Traffic,
    artifacts_dir,
    playground_env,
)
from tests.processes import running_gateway

pytestmark = pytest.mark.browser

WRONG_KEY = "nz_" + "A" * 52  # the right shape, so it reaches the key lookup


def state(page: Page) -> str:
    return page.locator("#response").get_attribute("data-state") or ""


def run_to_end(page: Page) -> None:
    """Click Run (which marks the response running at once) and wait for the end."""
    page.click("#run")
    expect(page.locator("#response")).not_to_have_attribute("data-state", "running")


def run_and_sample(page: Page, path: str) -> tuple[list[int], Request, Response]:
    """Click Run, then sample the length of the rendered text until the stream ends."""
    with (
        page.expect_request(lambda r: r.url.endswith(path)) as request_info,
        page.expect_response(lambda r: r.url.endswith(path)) as response_info,
    ):
        page.click("#run")
    lengths: list[int] = []
    deadline = time.monotonic() + 20
    while state(page) == "running":
        assert time.monotonic() < deadline, "the stream did not finish"
        lengths.append(len(page.locator("#output-text").text_content() or ""))
        time.sleep(0.02)
    return lengths, request_info.value, response_info.value


def growth_steps(lengths: list[int]) -> int:
    return sum(1 for before, after in itertools.pairwise(lengths) if after > before)


def sse_text(body: bytes) -> str:
    """The assistant text the SSE stream delivered, as a client would assemble it."""
    events = [event.removeprefix("data: ") for event in body.decode().split("\n\n") if event]
    chunks = [json.loads(data) for data in events if data != "[DONE]"]
    return "".join(c["delta"].get("content", "") for chunk in chunks for c in chunk["choices"])


def ndjson_text(body: bytes) -> str:
    return "".join(json.loads(line)["message"]["content"] for line in body.decode().splitlines())


def curl_words(command: str) -> list[str]:
    """The curl box as argv: continuation lines joined, then split as a shell would."""
    return shlex.split(command.replace("\\\n", " "))


def option(words: list[str], name: str) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words) if word == name]


def header(page: Page, name: str) -> str:
    return page.locator(f'#response-headers tr[data-header="{name}"] td').nth(1).inner_text()


def test_streamed_chat_renders_live_and_curl_mirrors_run(
    page: Page, playground: Playground, traffic: Traffic
) -> None:
    assert page.locator("#base-url").inner_text() == playground.origin
    # Gated until a key is entered: the streamed chat card is the default.
    assert page.locator('[data-endpoint="chat-sse"]').get_attribute("aria-current") == "true"
    assert page.locator("#run").is_disabled()
    assert page.locator("#refresh-models").is_disabled()

    page.fill("#api-key", playground.key)
    expect(page.locator("#run")).to_be_enabled()
    page.click("#refresh-models")
    page.wait_for_selector("#models-status:has-text('models available')")

    page.click('[data-endpoint="chat-sse"]')
    assert "SSE" in page.locator("#badge-stream").inner_text()
    assert page.locator("#badge-auth").inner_text() == "key required"
    curl_before_run = page.locator("#curl").inner_text()

    lengths, request, response = run_and_sample(page, "/v1/chat/completions")

    # Tokens arrived one after another, and the page rendered them as they came.
    assert growth_steps(lengths) >= 5, lengths
    assert lengths[0] < lengths[-1]
    assert state(page) == "done"
    assert page.locator("#response").get_attribute("data-status") == "200"
    assert page.locator("#status").inner_text().startswith("200")
    assert "[DONE]" in page.locator("#summary").inner_text()
    delivered = sse_text(response.body())
    assert len(delivered.split()) >= 20
    assert page.locator("#output-text").text_content() == delivered

    # The curl box is byte for byte what Run sent; only the key is masked on screen.
    words = curl_words(curl_before_run)
    assert words[:2] == ["curl", "-N"]
    assert words[2] == request.url == playground.origin + "/v1/chat/completions"
    assert request.method == "POST"
    (body,) = option(words, "--data-raw")
    assert body.encode() == request.post_data_buffer
    assert json.loads(body)["stream"] is True
    headers = dict(h.split(": ", 1) for h in option(words, "-H"))
    assert headers["Content-Type"] == request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == f"Bearer {playground.key}"
    assert headers["Authorization"].startswith(f"Bearer {playground.key[:12]}")
    assert playground.key not in curl_before_run
    # Copy gives the runnable command: the same text with the real key.
    page.click("#copy-curl")
    page.wait_for_selector("#copy-status:has-text('Copied')")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == curl_before_run.replace(headers["Authorization"], f"Bearer {playground.key}")
    assert option(curl_words(copied), "-H")[0] == f"Authorization: Bearer {playground.key}"

    # The interesting response headers are on show.
    assert header(page, "x-request-id") == response.headers["x-request-id"]
    assert header(page, "x-ratelimit-limit-requests") == "600"
    assert header(page, "x-budget-period") == "day"

    page.screenshot(path=str(artifacts_dir() / "playground.png"), full_page=True)

    # A wrong key: the 401 is shown with its status and code.
    page.fill("#api-key", WRONG_KEY)
    run_to_end(page)
    assert page.locator("#response").get_attribute("data-state") == "done"
    assert page.locator("#response").get_attribute("data-status") == "401"
    assert page.locator("#status").inner_text().startswith("401")
    assert "invalid_api_key" in page.locator("#summary").inner_text()
    assert "Bearer nz_AAAAAAAAA" in page.locator("#curl").inner_text()
    assert traffic.to("/v1/chat/completions")[-1].headers["authorization"] == (
        f"Bearer {WRONG_KEY}"
    )

    assert traffic.origins() == {playground.origin}
    assert traffic.csp_violations() == []


def test_native_chat_renders_ndjson_live(
    page: Page, playground: Playground, traffic: Traffic
) -> None:
    page.fill("#api-key", playground.key)
    page.click('[data-endpoint="api-chat"]')
    assert "NDJSON" in page.locator("#badge-stream").inner_text()

    lengths, request, response = run_and_sample(page, "/api/chat")

    assert growth_steps(lengths) >= 5, lengths
    assert response.headers["content-type"] == "application/x-ndjson"
    assert page.locator("#response").get_attribute("data-status") == "200"
    assert page.locator("#output-text").text_content() == ndjson_text(response.body())
    assert "done_reason: stop" in page.locator("#summary").inner_text()
    (body,) = option(curl_words(page.locator("#curl").inner_text()), "--data-raw")
    assert body.encode() == request.post_data_buffer
    assert traffic.origins() == {playground.origin}
    assert traffic.csp_violations() == []


def test_garbage_then_cleared_key_gates_run_again(page: Page) -> None:
    page.fill("#api-key", "autofilled-password")
    expect(page.locator("#run")).to_be_enabled()
    expect(page.locator("#key-hint")).to_contain_text("does not look like a gateway key")
    page.fill("#api-key", "")
    expect(page.locator("#run")).to_be_disabled()
    expect(page.locator("#refresh-models")).to_be_disabled()
    expect(page.locator("#key-hint")).to_contain_text("Enter an API key")


def test_probes_run_without_a_key_and_never_get_it(
    page: Page, playground: Playground, traffic: Traffic
) -> None:
    page.click('[data-endpoint="healthz"]')
    expect(page.locator("#run")).to_be_enabled()  # no key entered
    run_to_end(page)
    assert page.locator("#response").get_attribute("data-status") == "200"
    assert "authorization" not in traffic.to("/healthz")[-1].headers

    # With a key entered, a probe still does not get it; a blocked endpoint does, and
    # is refused anyway.
    page.fill("#api-key", playground.key)
    page.click('[data-endpoint="readyz"]')
    run_to_end(page)
    assert page.locator("#response").get_attribute("data-status") == "200"
    assert "authorization" not in traffic.to("/readyz")[-1].headers
    assert "Authorization" not in page.locator("#curl").inner_text()

    page.click('[data-endpoint="api-pull"]')
    run_to_end(page)
    assert page.locator("#response").get_attribute("data-status") == "403"
    assert "not available through the gateway" in page.locator("#summary").inner_text()
    assert traffic.to("/api/pull")[-1].headers["authorization"] == f"Bearer {playground.key}"


def test_every_endpoint_has_a_card(page: Page) -> None:
    cards = page.locator("[data-endpoint]")
    routes = {
        (card.get_attribute("data-method"), card.get_attribute("data-path")) for card in cards.all()
    }
    expected = {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model}"),
        ("POST", "/api/chat"),
        ("POST", "/api/generate"),
        ("POST", "/api/embed"),
        ("POST", "/api/embeddings"),
        ("GET", "/api/tags"),
        ("GET", "/api/ps"),
        ("POST", "/api/show"),
        ("GET", "/api/version"),
        ("POST", "/api/pull"),
        ("DELETE", "/api/delete"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    }
    assert expected <= routes
    # Open every card (in the page, one round trip) and read what it shows.
    shown: list[dict[str, str]] = page.evaluate(CARD_CONTENTS)
    assert len(shown) == cards.count()
    for card in shown:
        assert all(card.values()), card
    auth = {card["id"]: card["auth"] for card in shown}
    assert auth["chat-sse"] == "key required"
    assert auth["healthz"] == "no key"


CARD_CONTENTS = """() => [...document.querySelectorAll(".card-link")].map((card) => {
  card.click();
  const text = (id) => document.getElementById(id).textContent.trim();
  return {
    id: card.dataset.endpoint, title: text("card-title"), description: text("card-description"),
    sample: text("sample-response"), auth: text("badge-auth"), curl: text("curl"),
  };
})"""


# Every chunking of these bytes must give the same events as the whole: lines split
# anywhere, CRLF split between chunks, a multi-byte character split between chunks.
SSE_STREAM = (
    'data: {"t":"Grüß"}\r\n\r\n'
    ": keep-alive\n\n"
    'data: {"t":"a"}\ndata: {"t":"b"}\n\n'
    "event: note\rdata: [DONE]\r\r"
)
NDJSON_STREAM = '{"t":"Grüß"}\n{"t":"→"}\r\n{"t":"last, no newline"}'

FEED = """([kind, text]) => {
  const bytes = new TextEncoder().encode(text);
  const P = window.nzPlayground;
  const results = [];
  const cuts = [];
  for (let i = 0; i <= bytes.length; i++) cuts.push([i]);
  for (let i = 1; i < bytes.length; i++) cuts.push([i - 1, i]);
  cuts.push([...bytes.keys()]);  // one byte at a time
  for (const cut of cuts) {
    const seen = [];
    const parser = kind === "sse"
      ? new P.SSEParser((event, data) => seen.push(event + "|" + data), (c) => seen.push(":" + c))
      : new P.NDJSONParser((line) => seen.push(line));
    const text = P.decoderFor((t) => parser.push(t));
    let start = 0;
    for (const at of [...cut, bytes.length]) { text.push(bytes.slice(start, at)); start = at; }
    text.end();
    parser.end();
    results.push(seen);
  }
  return results;
}"""


@pytest.mark.parametrize(
    ("kind", "stream", "expected"),
    [
        (
            "sse",
            SSE_STREAM,
            [
                'message|{"t":"Grüß"}',
                ": keep-alive",
                'message|{"t":"a"}\n{"t":"b"}',
                "note|[DONE]",
            ],
        ),
        ("ndjson", NDJSON_STREAM, ['{"t":"Grüß"}', '{"t":"→"}', '{"t":"last, no newline"}']),
    ],
)
def test_stream_parsers_survive_any_chunking(
    page: Page, kind: str, stream: str, expected: list[str]
) -> None:
    results: list[Any] = page.evaluate(FEED, [kind, stream])
    assert len(results) > len(stream)
    assert all(seen == expected for seen in results), [s for s in results if s != expected][:3]


def test_playground_is_off_unless_enabled(playground: Playground, tmp_path: Path) -> None:
    served = httpx.get(playground.url)
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in served.headers["content-security-policy"]

    env = playground_env(playground.mock.url, playground.database_url)
    with running_gateway(tmp_path, env) as gateway:
        assert httpx.get(gateway.url + "/playground").status_code == 404
        assert httpx.get(gateway.url + "/healthz").status_code == 200
