"""The mock's pure parts: time format, body decoding, stop sequences, models, vectors, plans."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nz_mock_ollama.bodies import parse_body
from nz_mock_ollama.catalogue import Catalogue, lookup_key, model_from_name
from nz_mock_ollama.embeddings import vector
from nz_mock_ollama.errors import OllamaError
from nz_mock_ollama.faults import FaultSpec, take_failure, update_faults
from nz_mock_ollama.generation import apply_stop, default_corpus
from nz_mock_ollama.gojson import dumps
from nz_mock_ollama.keep_alive import parse_keep_alive
from nz_mock_ollama.replies import Reply, plan_reply
from nz_mock_ollama.structured import split_json_text
from nz_mock_ollama.timestamps import rfc3339_nano, utc_now
from nz_mock_ollama.tokens import chat_prompt_tokens, text_tokens

GO_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{0,8}[1-9]))?(Z|[+-]\d\d:\d\d)$")


@pytest.mark.parametrize(
    ("epoch_ns", "offset", "expected"),
    [
        (0, 0, "1970-01-01T00:00:00Z"),
        (1_500_000_000, -420, "1969-12-31T17:00:01.5-07:00"),
        (1_746_405_464_706_015_396, 0, "2025-05-05T00:37:44.706015396Z"),
        (1_746_405_464_000_000_010, 330, "2025-05-05T06:07:44.00000001+05:30"),
    ],
)
def test_rfc3339_nano_examples(epoch_ns: int, offset: int, expected: str) -> None:
    assert rfc3339_nano(epoch_ns, offset) == expected


@given(st.integers(0, 4_000_000_000_000_000_000), st.integers(-720, 840))
def test_rfc3339_nano_is_the_same_instant(epoch_ns: int, offset: int) -> None:
    text = rfc3339_nano(epoch_ns, offset)
    match = GO_TIME.match(text)
    assert match, text
    wall, fraction, zone = match.groups()
    tz = UTC if zone == "Z" else timezone(timedelta(minutes=offset))
    parsed = datetime.fromisoformat(wall).replace(tzinfo=tz)
    assert int(parsed.timestamp()) == epoch_ns // 1_000_000_000
    assert int((fraction or "0").ljust(9, "0")) == epoch_ns % 1_000_000_000


def test_utc_now_is_go_formatted_utc_and_current() -> None:
    now = utc_now()
    match = GO_TIME.match(now)
    assert match
    assert match.group(3) == "Z"
    parsed = datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
    assert abs(parsed.timestamp() - datetime.now(UTC).timestamp()) < 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "unexpected EOF"),
        (b'{"a":1,}', "invalid character '}' looking for beginning of object key string"),
        (b'{"a" 1}', "invalid character '1' after object key"),
        (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
        (b"{} x", "invalid character 'x' after top-level value"),
        (b"tru", "unexpected EOF"),
        (b"NaN", "invalid character 'N' looking for beginning of value"),
        (b'"x"', "json: cannot unmarshal string into Go value of type api.ChatRequest"),
    ],
)
def test_decode_errors_read_like_go(raw: bytes, message: str) -> None:
    with pytest.raises(OllamaError) as raised:
        parse_body(raw, "ChatRequest")
    assert (raised.value.status, raised.value.message) == (400, message)


def test_null_body_is_an_empty_request() -> None:
    assert parse_body(b"null", "ChatRequest") == {}


@given(st.lists(st.text(min_size=1, max_size=6), max_size=20), st.text(min_size=1, max_size=3))
def test_apply_stop_cuts_before_the_first_stop(tokens: list[str], stop: str) -> None:
    kept, stopped = apply_stop(tokens, [stop])
    text = "".join(tokens)
    assert stopped == (stop in text)
    expected = text[: text.index(stop)] if stopped else text
    assert "".join(kept) == expected
    assert all(k for k in kept)
    assert len(kept) <= len(tokens)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 300.0),
        (0, 0.0),
        ("0", 0.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("300", 300.0),
        (-1, None),
        ("-1m", None),
    ],
)
def test_keep_alive(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5x", "m", True, [1]])
def test_keep_alive_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"duration|unmarshal"):
        parse_keep_alive(value)


def test_model_names_and_inference() -> None:
    assert lookup_key("Llama3.2") == "llama3.2:latest"
    assert lookup_key("library/llama3.2") == "llama3.2:latest"
    assert lookup_key("registry.ollama.ai/acme/coder:1b") == "acme/coder:1b"
    qwen = model_from_name("qwen2.5:7b", 0)
    assert (qwen.architecture, qwen.details()["parameter_size"], qwen.embedding) == (
        "qwen2",
        "7.0B",
        False,
    )
    for name in ("all-minilm", "my-embed:v2", "bge-large", "nomic-embed-text"):
        assert model_from_name(name, 0).embedding, name
    assert model_from_name("deepseek-r1:8b", 0).thinking
    assert model_from_name("x:1b-q8_0", 0).quantization_level == "Q8_0"


def test_catalogue_orders_newest_first_and_caches_tags() -> None:
    catalogue = Catalogue.from_names(["a", "b"], 0)
    body = catalogue.tags_body()
    assert catalogue.tags_body() is body
    catalogue.add(model_from_name("c", 2_000_000_000_000_000_000))
    assert [e.name for e in catalogue.entries()] == ["c:latest", "a:latest", "b:latest"]
    assert catalogue.tags_body() is not body
    assert catalogue.remove("C")
    assert not catalogue.remove("c")


@given(st.text(max_size=50), st.integers(1, 512))
def test_vectors_are_unit_length_and_stable(text: str, dims: int) -> None:
    values = vector("m", text, dims)
    assert len(values) == dims
    assert math.sqrt(sum(v * v for v in values)) == pytest.approx(1.0, abs=1e-5)
    assert vector("m", text, dims) == values


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_json_pieces_rejoin(value: object) -> None:
    text = json.dumps(value)
    assert "".join(split_json_text(text)) == text.rstrip()


def test_go_json_escapes_html_and_keeps_utf8() -> None:
    assert dumps({"a": "<b>&é"}) == '{"a":"\\u003cb\\u003e\\u0026é"}'


def test_token_counts() -> None:
    assert [text_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
    assert chat_prompt_tokens([], []) == 1
    assert chat_prompt_tokens([{"role": "user", "content": "abcd"}], []) == 1 + 4 + 1


def _plan(*, think: bool, num_predict: int | None) -> Reply:
    return plan_reply(
        corpus=default_corpus(),
        seed=7,
        length=10,
        think=think,
        fmt=None,
        tool=None,
        num_predict=num_predict,
        stops=(),
    )


def test_plan_caps_thinking_and_content_together() -> None:
    full = _plan(think=True, num_predict=None)
    assert (len(full.thinking), len(full.content), full.done_reason) == (5, 10, "stop")
    cut = _plan(think=True, num_predict=7)
    assert (len(cut.thinking), len(cut.content), cut.done_reason) == (5, 2, "length")
    assert cut.eval_count == 7
    assert _plan(think=False, num_predict=10).done_reason == "stop"
    assert _plan(think=False, num_predict=9).done_reason == "length"


def test_fault_updates() -> None:
    spec = update_faults(FaultSpec(), {"fail_next": 1, "paths": ["/api/chat"]})
    assert take_failure(spec, "/api/tags") == (spec, None)
    after, failure = take_failure(spec, "/api/chat")
    assert failure == (500, "mock: injected failure", False)
    assert after.fail_next == 0
    plain = update_faults(spec, {"fail_plain": True, "fail_status": 502})
    assert take_failure(plain, "/api/chat")[1] == (502, "mock: injected failure", True)
    with pytest.raises(ValueError, match="fail_plain"):
        update_faults(spec, {"fail_plain": 1})
    with pytest.raises(ValueError, match="unknown fault keys: x"):
        update_faults(spec, {"x": 1})
