"""NDJSON splitting and SSE framing: round trips under arbitrary chunking, edge cases."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai._streaming import SSEDecoder  # the SDK's own reader, as a reference

from nz_proxy.translation.framing import (
    SSE_DONE,
    LineTooLong,
    NdjsonSplitter,
    sse_event,
    sse_json,
)
from tests.sse import SseParser
from tests.strategies import chunkings, json_objects, unicode_text


def split_all(splitter: NdjsonSplitter, chunks: list[bytes]) -> list[bytes]:
    lines: list[bytes] = []
    for chunk in chunks:
        lines.extend(splitter.feed(chunk))
    tail = splitter.flush()
    if tail is not None:
        lines.append(tail)
    return lines


def parse_all(chunks: list[bytes]) -> list[str]:
    parser = SseParser()
    out: list[str] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


# --------------------------------------------------------------------------- NDJSON


@given(
    objects=st.lists(json_objects, max_size=5),
    crlf=st.booleans(),
    trailing_newline=st.booleans(),
    data=st.data(),
)
def test_ndjson_round_trip_under_any_chunking(
    objects: list[dict[str, Any]], crlf: bool, trailing_newline: bool, data: st.DataObject
) -> None:
    end = b"\r\n" if crlf else b"\n"
    body = end.join(msgspec.json.encode(obj) for obj in objects)
    if trailing_newline and objects:
        body += end
    chunks = data.draw(chunkings(body))

    lines = split_all(NdjsonSplitter(), chunks)

    assert [msgspec.json.decode(line) for line in lines] == objects


@given(
    lines=st.lists(st.text(min_size=1).filter(lambda s: "\n" not in s and not s.isspace())),
    blanks=st.lists(st.sampled_from([b"\n", b"\r\n", b"  \n", b"\t\r\n"]), max_size=6),
    data=st.data(),
)
def test_ndjson_skips_blank_lines(
    lines: list[str], blanks: list[bytes], data: st.DataObject
) -> None:
    encoded = [line.rstrip("\r").encode() for line in lines]
    encoded = [line for line in encoded if line and not line.isspace()]
    pieces: list[bytes] = []
    for i, line in enumerate(encoded):
        pieces.append(line + b"\n")
        if i < len(blanks):
            pieces.append(blanks[i])
    pieces.extend(blanks[len(encoded) :])
    body = b"".join(pieces)

    assert split_all(NdjsonSplitter(), data.draw(chunkings(body))) == encoded


def test_ndjson_multibyte_character_split_across_chunks() -> None:
    line = '{"content":"中🙂é"}'.encode()
    splitter = NdjsonSplitter()
    out: list[bytes] = []
    for i in range(len(line)):
        out.extend(splitter.feed(line[i : i + 1]))
    out.extend(splitter.feed(b"\r"))
    assert out == []
    (completed,) = splitter.feed(b"\n")
    assert completed == line
    assert json.loads(completed) == {"content": "中🙂é"}


def test_ndjson_without_any_newline_is_all_tail() -> None:
    splitter = NdjsonSplitter()
    assert splitter.feed(b'{"a":') == []
    assert splitter.feed(b"1}") == []
    assert splitter.pending == 7
    assert splitter.flush() == b'{"a":1}'
    assert splitter.flush() is None
    assert splitter.pending == 0


def test_ndjson_only_newlines_yields_nothing() -> None:
    splitter = NdjsonSplitter()
    assert splitter.feed(b"\n\n\r\n\n") == []
    assert splitter.feed(b"\n" * 1000) == []
    assert splitter.flush() is None


def test_ndjson_huge_line_in_one_and_in_many_chunks() -> None:
    line = b'{"x":"' + b"a" * 5_000_000 + b'"}'
    assert NdjsonSplitter().feed(line + b"\n") == [line]
    splitter = NdjsonSplitter()
    for i in range(0, len(line), 65_536):
        assert splitter.feed(line[i : i + 65_536]) == []
    assert splitter.feed(b"\n") == [line]


def test_ndjson_max_line_bounds_the_buffer() -> None:
    splitter = NdjsonSplitter(max_line=10)
    assert splitter.feed(b"0123456789\n0123") == [b"0123456789"]
    with pytest.raises(LineTooLong):
        splitter.feed(b"4567890")
    assert splitter.pending == 0


# --------------------------------------------------------------------------- SSE


@given(objects=st.lists(json_objects, max_size=6), data=st.data())
def test_sse_json_round_trip_under_any_chunking(
    objects: list[dict[str, Any]], data: st.DataObject
) -> None:
    body = b"".join(sse_json(obj) for obj in objects) + SSE_DONE
    payloads = parse_all(data.draw(chunkings(body)))
    assert payloads[-1] == "[DONE]"
    assert [json.loads(p) for p in payloads[:-1]] == objects


@given(
    payloads=st.lists(unicode_text, max_size=5),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    data=st.data(),
)
def test_sse_event_survives_line_breaks_and_any_line_ending(
    payloads: list[str], ending: str, data: st.DataObject
) -> None:
    body = b"".join(sse_event(p.encode()) for p in payloads)
    body = body.replace(b"\n", ending.encode())
    parsed = parse_all(data.draw(chunkings(body)))
    # SSE normalises CR and CRLF inside a payload to LF.
    assert parsed == [p.replace("\r\n", "\n").replace("\r", "\n") for p in payloads]


def test_sse_event_is_one_data_line_for_json() -> None:
    assert sse_json({"a": "x\ny"}) == b'data: {"a":"x\\ny"}\n\n'
    assert sse_event(b"[DONE]") == SSE_DONE == b"data: [DONE]\n\n"
    assert sse_event(b"a\nb") == b"data: a\ndata: b\n\n"


def test_sse_parser_whatwg_details() -> None:
    stream = (
        b"\xef\xbb\xbf: keep-alive comment\n"
        b"data:no-space\n\n"
        b"data:  two spaces\n\n"
        b"event: update\ndata: first\ndata: second\n\n"
        b"event: lonely\n\n"  # no data: never dispatched
        b"data\n\n"  # a field name alone is an empty value
        b"id: 7\nretry: 10\nunknown: x\ndata: after-fields\n\n"
        b"data: unterminated"
    )
    parser = SseParser()
    assert parser.feed(stream) == [
        "no-space",
        " two spaces",
        "first\nsecond",
        "",
        "after-fields",
    ]
    assert parser.last_event == "message"


def test_sse_parser_crlf_split_between_chunks_is_one_line_end() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # the LF completes the CRLF; no blank line yet
    assert parser.feed(b"\r") == ["a"]
    assert parser.feed(b"\ndata: b\r\r") == ["b"]


def test_sse_parser_bom_split_across_chunks() -> None:
    parser = SseParser()
    assert parser.feed(b"\xef") == []
    assert parser.feed(b"\xbb") == []
    assert parser.feed(b"\xbfdata: x\n\n") == ["x"]


_sse_lines = st.one_of(
    st.builds(
        lambda v: "data: " + v, unicode_text.map(lambda s: s.replace("\r", "").replace("\n", ""))
    ),
    st.builds(lambda v: "data:" + v, st.sampled_from(["", " ", "x", "  y"])),
    st.sampled_from(["", "", ": comment", "data", "foo: bar", ":"]),
)


@given(
    lines=st.lists(_sse_lines, max_size=12),
    endings=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1),
    data=st.data(),
)
def test_sse_parser_agrees_with_the_openai_sdk_decoder(
    lines: list[str], endings: list[str], data: st.DataObject
) -> None:
    body = "".join(line + endings[i % len(endings)] for i, line in enumerate(lines)).encode()
    chunks = data.draw(chunkings(body))
    sdk = [event.data for event in SSEDecoder().iter_bytes(iter(chunks))]
    assert parse_all(chunks) == sdk
