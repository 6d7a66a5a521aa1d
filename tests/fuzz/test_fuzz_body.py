"""Fuzzing request-body intake (SPEC §6.4): ``read_body`` against any sequence of ASGI
messages and any Content-Length, ``parse_json_object`` against any bytes.

``read_body`` is driven by a scripted ``receive`` that never suspends, so each
coroutine runs to completion with one ``send(None)``: no event loop, thousands of
examples a second. The script also records how far it was read, which pins down the
"refused as soon as it is known" part of the contract.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Coroutine
from itertools import pairwise
from typing import Any, TypeVar

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from nz_proxy.body import ClientGone, parse_json_object, read_body
from nz_proxy.errors import InvalidRequest, RequestTooLarge
from nz_proxy.types import Message
from tests.strategies import json_objects, json_values, unicode_text

T = TypeVar("T")

# Examples that are slow to build (thousands of digits): shrinking would only spend CI time.
NO_SHRINK = (Phase.explicit, Phase.generate)


class Overread(Exception):
    """``read_body`` asked for a message after the one that ended the request."""


_LOOP = asyncio.new_event_loop()  # read_body keeps its deadline with the loop's clock


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end (the scripted receive never suspends)."""
    return _LOOP.run_until_complete(coro)


class Script:
    """An ASGI ``receive`` that plays a fixed list of messages, once."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.calls = 0

    async def __call__(self) -> Message:
        if self.calls >= len(self.messages):
            raise Overread
        message = self.messages[self.calls]
        self.calls += 1
        return message


def body_message(chunk: bytes, more: bool, *, explicit: bool) -> Message:
    """An ``http.request`` message; ``explicit`` False leaves out the defaulted keys."""
    message: Message = {"type": "http.request"}
    if chunk or explicit:
        message["body"] = chunk
    if more or explicit:
        message["more_body"] = more
    return message


@st.composite
def request_scripts(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[Message], int | None]:
    """A body, its chunks (empty ones included) as messages, and where a disconnect
    replaces the rest of the stream (None: the request completes)."""
    body = draw(st.binary(max_size=120))
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=8))
    bounds = [0, *sorted(cuts), len(body)]
    chunks = [body[a:b] for a, b in pairwise(bounds)]
    explicit = draw(st.booleans())
    messages = [
        body_message(chunk, i < len(chunks) - 1, explicit=explicit)
        for i, chunk in enumerate(chunks)
    ]
    gone: int | None = None
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        # The client leaves in place of one message (those before it all said more_body).
        gone = draw(st.integers(min_value=0, max_value=len(messages) - 1))
        messages = [*messages[:gone], {"type": "http.disconnect"}]
    return body, chunks, messages, gone


# --------------------------------------------------------------------------- Content-Length

STRICT_LENGTH = re.compile(rb"[0-9]+")  # RFC 9110 §8.6: 1*DIGIT
LAX_NUMBER = re.compile(rb"\s*[+-]?[0-9_]+\s*")  # what Python's int() might still take


def declared_lengths(size: int) -> st.SearchStrategy[bytes | None]:
    """No header; the true size; lying low or high; zero-padded; huge; negative;
    other spellings int() may accept; and text that is no number at all."""
    exact = st.integers(min_value=0, max_value=10**30).map(lambda n: str(n).encode())
    return st.one_of(
        st.none(),
        st.just(str(size).encode()),
        st.integers(min_value=0, max_value=size).map(lambda n: str(n).encode()),
        st.integers(min_value=size, max_value=size + 200).map(lambda n: str(n).encode()),
        exact,
        st.integers(min_value=31, max_value=4300).map(lambda n: b"9" * n),  # int()'s ceiling
        st.tuples(st.integers(1, 40), exact).map(lambda p: b"0" * p[0] + p[1]),
        st.integers(min_value=-(10**20), max_value=-1).map(lambda n: str(n).encode()),
        st.sampled_from([b" 12", b"12 ", b"+7", b"1_0", b"-0", b"\t3\r", b"00", b"0"]),
        st.binary(max_size=12),
        st.sampled_from([b"", b" ", b"abc", b"1e3", b"0x10", b"12abc", b"\xd9\xa1", b"\xff"]),
    )


def first_over(chunks: list[bytes], limit: int) -> int | None:
    """The index of the message whose chunk takes the running size past ``limit``."""
    size = 0
    for i, chunk in enumerate(chunks):
        size += len(chunk)
        if size > limit:
            return i
    return None


@settings(max_examples=200)
@given(
    script=request_scripts(),
    limit=st.integers(min_value=0, max_value=130),
    data=st.data(),
)
def test_read_body_against_any_message_stream_and_content_length(
    script: tuple[bytes, list[bytes], list[Message], int | None],
    limit: int,
    data: st.DataObject,
) -> None:
    body, chunks, messages, gone = script
    declared = data.draw(declared_lengths(len(body)), label="content-length")
    headers = {b"content-length": declared} if declared is not None else {}
    receive = Script(messages)

    try:
        result: bytes | Exception = drive(read_body(receive, headers, limit))
    except (InvalidRequest, RequestTooLarge, ClientGone) as error:
        result = error
    # Anything else (Overread, ValueError, KeyError, ...) escapes and fails the test.
    if isinstance(result, InvalidRequest | RequestTooLarge):
        # Fixed texts: neither the header nor the body is ever echoed.
        assert result.message in (
            "Content-Length is not a number.",
            f"Request body exceeds {limit} bytes.",
        )

    if declared is not None and not STRICT_LENGTH.fullmatch(declared):
        if not LAX_NUMBER.fullmatch(declared):
            # No number at all: a 400 before a single message is read.
            assert isinstance(result, InvalidRequest), result
            assert result.message == "Content-Length is not a number."
            assert receive.calls == 0
            return
        # Signs, underscores, padding: refusing them is fine, but if they are taken as
        # a number they must not open a way past the limit. Only the size that really
        # arrived then decides, as checked below.
        if isinstance(result, InvalidRequest):
            assert receive.calls == 0
            return
        value = int(re.sub(rb"[\s_+]", b"", declared))
        if value > limit:
            assert isinstance(result, RequestTooLarge)
            assert receive.calls == 0
            return
    elif declared is not None and int(declared) > limit:
        # The declared size alone is enough: refused before reading anything.
        assert isinstance(result, RequestTooLarge), result
        assert receive.calls == 0
        return

    over = first_over(chunks if gone is None else chunks[:gone], limit)
    if over is not None:
        # Refused at the very message that crossed the limit, the rest left unread.
        assert isinstance(result, RequestTooLarge), result
        assert receive.calls == over + 1
    elif gone is not None:
        assert isinstance(result, ClientGone), result
        assert receive.calls == gone + 1
    else:
        assert result == body
        assert receive.calls == len(messages)  # every message read, none past the last


@settings(max_examples=100)
@given(body=st.binary(min_size=1, max_size=200), data=st.data())
def test_the_limit_is_inclusive(body: bytes, data: st.DataObject) -> None:
    chunks = data.draw(st.lists(st.binary(max_size=3), max_size=3))
    messages = [body_message(c, True, explicit=True) for c in chunks]
    messages.append(body_message(body, False, explicit=True))
    total = b"".join(chunks) + body
    # With the header the declared size decides, without it the bytes counted.
    for headers in ({b"content-length": str(len(total)).encode()}, {}):
        assert drive(read_body(Script(messages), headers, len(total))) == total
        with pytest.raises(RequestTooLarge) as info:
            drive(read_body(Script(messages), headers, len(total) - 1))
        assert info.value.message == f"Request body exceeds {len(total) - 1} bytes."


@settings(max_examples=5, phases=NO_SHRINK)
@given(digits=st.integers(min_value=4301, max_value=6000))
def test_a_content_length_with_thousands_of_digits_is_too_large_not_malformed(
    digits: int,
) -> None:
    headers = {b"content-length": b"9" * digits}
    with pytest.raises(RequestTooLarge):
        drive(read_body(Script([]), headers, 16 << 20))


# --------------------------------------------------------------------------- JSON


def must_be_object_or_400(raw: bytes) -> dict[str, Any] | InvalidRequest:
    """``parse_json_object``'s answer; any exception but InvalidRequest fails the test."""
    try:
        value = parse_json_object(raw)
    except InvalidRequest as error:
        refusal = error
    else:
        assert isinstance(value, dict)
        assert all(isinstance(k, str) for k in value)
        return value
    assert refusal.status == 400
    # Bounded whatever the input: msgspec names a byte offset and a path of indices,
    # never the text it choked on.
    assert len(refusal.message) <= 4096, refusal.message[:200]
    return refusal


def go_reading(value: Any) -> Any:
    """What Go's decoder makes of a value the stdlib decoded: lone surrogates are U+FFFD."""
    if isinstance(value, str):
        return re.sub("[\ud800-\udfff]", "\ufffd", value)
    if isinstance(value, list):
        return [go_reading(item) for item in value]
    if isinstance(value, dict):
        return {go_reading(k): go_reading(v) for k, v in value.items()}
    return value


MARKER = "Qz7MARKERxk"  # a token that must never come back in an error message

json_noise = st.sampled_from(
    [
        "{", "}", "[", "]", ",", ":", '"', "\\", "\\u", "\\ud800", "\\udc00", "\\ud83d\\ude00",
        "NaN", "-Infinity", "Infinity", "1e400", "-1e-400", "1" * 40, "-0", "0.0e0",
        "true", "fals", "null", " ", "\n", "\t", "\x0b", "\ufeff", "\u2028", "\x00",
        "é", "🙂", MARKER, '"' + MARKER + '"', '{"' + MARKER + '":',
    ]
)  # fmt: skip


@st.composite
def mangled_json(draw: st.DrawFn) -> bytes:
    """Valid UTF-8 that is often nearly JSON: a real document with noise spliced in,
    nesting up to a depth well inside the recursion limit, a BOM, big numbers."""
    kind = draw(st.sampled_from(["splice", "noise", "nest", "number", "bom", "text"]))
    if kind == "splice":
        doc = json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
        at = draw(st.integers(min_value=0, max_value=len(doc)))
        cut = draw(st.integers(min_value=0, max_value=3))
        text = doc[:at] + draw(json_noise) + doc[at + cut :]
    elif kind == "noise":
        text = "".join(draw(st.lists(json_noise, max_size=20)))
    elif kind == "nest":
        depth = draw(st.integers(min_value=1, max_value=300))
        openers = draw(st.lists(st.sampled_from(["[", '{"a":', "[1,"]), min_size=1))
        opened = [openers[i % len(openers)] for i in range(depth)]
        closers = "".join("]" if o.startswith("[") else "}" for o in reversed(opened))
        inner = draw(json_noise | st.just("0"))
        closed = closers[: draw(st.integers(min_value=0, max_value=len(closers)))]
        text = draw(st.sampled_from(["", '{"k":'])) + "".join(opened) + inner + closed
    elif kind == "number":
        digits = "9" * draw(st.integers(min_value=15, max_value=5000))
        number = draw(st.sampled_from([digits, "-" + digits, "0." + digits, digits + "e9"]))
        text = '{"n":' + number + "}"
    elif kind == "bom":
        text = "\ufeff" + json.dumps(draw(json_objects))
    else:
        text = draw(unicode_text)
    return text.encode()


@settings(max_examples=150)
@given(raw=mangled_json())
def test_parse_json_object_returns_a_dict_or_a_400_for_any_utf8(raw: bytes) -> None:
    outcome = must_be_object_or_400(raw)
    if isinstance(outcome, InvalidRequest):
        assert MARKER not in outcome.message
        return
    # Whatever it accepts is real JSON, read the way the stdlib reads it, except that an
    # unpaired surrogate escape reads as U+FFFD, as in Go.
    assert outcome == go_reading(json.loads(raw))


@settings(max_examples=200)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        # Opened as a string, an object or an array, so msgspec's string decoding (UTF-8
        # checked only there) and nesting code see the random bytes.
        st.tuples(
            st.sampled_from([b'{"', b'{"k":"', b'["', b'"', b"[[[", b'{"k":{"']), st.binary()
        ).map(b"".join),
    )
)
def test_parse_json_object_on_arbitrary_bytes_is_a_dict_or_a_400(raw: bytes) -> None:
    outcome = must_be_object_or_400(raw)
    if isinstance(outcome, dict):
        assert raw.lstrip(b" \t\r\n")[:1] == b"{"
        assert outcome == go_reading(json.loads(raw))


@settings(max_examples=100)
@given(
    obj=json_objects,
    indent=st.none() | st.integers(min_value=0, max_value=3),
    ascii_only=st.booleans(),
    pad=st.sampled_from(["", " ", "\n", "\r\n\t "]),
)
def test_any_json_object_parses_back_to_itself(
    obj: dict[str, Any], indent: int | None, ascii_only: bool, pad: str
) -> None:
    raw = (pad + json.dumps(obj, indent=indent, ensure_ascii=ascii_only) + pad).encode()
    assert parse_json_object(raw) == obj


@settings(max_examples=100)
@given(value=json_values.filter(lambda v: not isinstance(v, dict)))
def test_json_that_is_not_an_object_is_the_one_400(value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_object(json.dumps(value).encode())
    assert info.value.message == "The request body must be a JSON object."


@settings(max_examples=50)
@given(blank=st.text(st.sampled_from(" \t\r\n\x0b\x0c"), max_size=20))
def test_a_blank_body_is_the_empty_body_400(blank: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_object(blank.encode())
    assert info.value.message == "The request body is empty; send a JSON object."


@pytest.mark.parametrize(
    "raw",
    [
        b'{"' + b"K" * 1_000_000 + b'\\q"}',  # bad escape after a megabyte-long key
        b'{"a":"' + b"A" * 1_000_000,  # truncated inside a megabyte-long string
        b'{"' + MARKER.encode() * 50_000 + b'":1e400}',  # out of range, under a long key
        b'{"a":1}' + MARKER.encode() * 50_000,  # trailing garbage
        b"[" + b"1," * 200_000 + b"x]",  # far down a long array
    ],
    ids=["bad-escape", "truncated", "out-of-range", "trailing", "long-array"],
)
def test_errors_about_huge_bodies_stay_short_and_echo_nothing(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_object(raw)
    assert len(info.value.message) < 200, info.value.message[:300]
    assert MARKER not in info.value.message
    assert "AAAA" not in info.value.message
    assert "KKKK" not in info.value.message


# Both once escaped parse_json_object as UnicodeDecodeError / RecursionError (a 500
# instead of a 400): msgspec raises those, not DecodeError.


@settings(max_examples=20)
@given(
    before=st.text(
        st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters='"\\'), max_size=5
    ),
    bad=st.sampled_from([b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]),
    in_key=st.booleans(),
)
def test_invalid_utf8_inside_a_json_string_is_a_400(before: str, bad: bytes, in_key: bool) -> None:
    string = b'"' + before.encode() + bad + b'"'
    raw = b"{" + string + b":1}" if in_key else b'{"k":' + string + b"}"
    assert isinstance(must_be_object_or_400(raw), InvalidRequest)


@settings(max_examples=5)
@given(
    depth=st.integers(min_value=50_000, max_value=100_000),
    opener=st.sampled_from([b"[", b'{"a":']),
    closed=st.booleans(),
)
def test_deeply_nested_json_is_a_400(depth: int, opener: bytes, closed: bool) -> None:
    closer = b"]" if opener == b"[" else b"}"
    raw = b'{"a":' + opener * depth + b"0" + (closer * depth if closed else b"") + b"}"
    assert isinstance(must_be_object_or_400(raw), InvalidRequest)
