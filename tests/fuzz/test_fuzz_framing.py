"""Fuzzing stream framing: ``NdjsonSplitter`` and ``SseParser`` against whole-stream
reference readers, on garbage as well as on real frames, under any chunking.

tests/proxy/test_framing.py round-trips well-formed streams. Here the streams are
arbitrary bytes weighted towards the characters that matter (CR, LF, spaces, ``data:``,
BOMs, multi-byte and invalid UTF-8), every chunking is compared with the reference and
with the stream fed whole, and ``max_line`` is pinned at its exact edge.
"""

from __future__ import annotations

import json
import re
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder  # the SDK's own reader, as a second reference

from nz_proxy.translation.framing import SSE_DONE, LineTooLong, NdjsonSplitter, sse_event, sse_json
from tests.sse import SseParser
from tests.strategies import chunkings, json_values, unicode_text

# --------------------------------------------------------------------------- streams

_TOKENS = [
    b"\n", b"\r", b"\r\n", b"\n\n", b"\r\r", b" ", b"\t", b"\x0b", b"\x0c", b"\x00",
    b"data", b"data:", b"data: ", b"data:  ", b"event: ", b"event:x", b": comment", b":", b"id: 1",
    b'{"a":1}', b"[DONE]", b"x", b"\xef\xbb\xbf", b"\xef\xbb", b"\xc3\xa9", b"\xe4\xb8\xad",
    b"\xf0\x9f\x99\x82", b"\xff", b"\xc3", b"\xe2\x80\xa8", b"\xc2\x85",
]  # fmt: skip

garbage: st.SearchStrategy[bytes] = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=40).map(b"".join),
    st.binary(max_size=120),
)

_SSE_LINES = [
    b"data: a", b"data:  b", b"data:c", b"data", b"data:", b"data: \xc3\xa9\xf0\x9f\x99\x82",
    b"event: e", b"event:", b": ping", b":", b"id: 7", b"retry: 5", b"x: y", b"", b"",
]  # fmt: skip

# Line-shaped streams: several data lines per event, blank lines, comments, mixed line
# endings. Garbage rarely lines up this way, and this is where line joining can go wrong.
sse_lines: st.SearchStrategy[bytes] = st.lists(
    st.tuples(
        st.sampled_from(_SSE_LINES) | st.sampled_from(_TOKENS),
        st.sampled_from([b"\n", b"\r\n", b"\r"]),
    ),
    max_size=16,
).map(lambda pairs: b"".join(line + end for line, end in pairs))

streams = garbage | sse_lines


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` in chunks: the shared ``chunkings``, or a cut right after every CR (so
    each CRLF straddles two chunks), or one cut inside every multi-byte character."""
    mode = draw(st.sampled_from(["any", "after-cr", "mid-char"]))
    if mode == "any":
        return draw(chunkings(data))
    if mode == "after-cr":
        points = [i + 1 for i, byte in enumerate(data) if byte == 0x0D]
    else:
        points = [i for i, byte in enumerate(data) if i and 0x80 <= byte < 0xC0]
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


# --------------------------------------------------------------------------- NDJSON

_ASCII_SPACE = b" \t\n\r\x0b\x0c"


def ndjson_reference(data: bytes) -> tuple[list[bytes], bytes | None]:
    """Go's ``bufio.ScanLines`` (what Ollama writes against) minus blank lines: split on
    LF only, drop one CR before it, skip lines of ASCII whitespace. Returns the complete
    lines and what ``flush`` owes for the unterminated tail."""
    *complete, tail = data.split(b"\n")

    def clean(line: bytes) -> bytes:
        line = line.removesuffix(b"\r")
        return line if line.strip(_ASCII_SPACE) else b""

    return [c for line in complete if (c := clean(line))], clean(tail) or None


def pending_reference(data: bytes) -> int:
    return len(data) - (data.rfind(b"\n") + 1)


@settings(max_examples=200)
@given(stream=streams, data=st.data())
def test_ndjson_matches_the_reference_after_every_chunk(stream: bytes, data: st.DataObject) -> None:
    chunks = data.draw(cuts(stream))
    splitter = NdjsonSplitter()
    got: list[bytes] = []
    fed = b""
    for chunk in chunks:
        got.extend(splitter.feed(chunk))
        fed += chunk
        # Not only at the end: every prefix has released exactly its complete lines.
        assert got == ndjson_reference(fed)[0]
        assert splitter.pending == pending_reference(fed)
    lines, tail = ndjson_reference(stream)
    assert splitter.flush() == tail
    assert splitter.pending == 0
    assert splitter.flush() is None
    # Whole or in pieces, the same units.
    whole = NdjsonSplitter()
    assert whole.feed(stream) == lines == got
    assert whole.flush() == tail


@settings(max_examples=100)
@given(first=garbage, second=garbage)
def test_ndjson_flush_leaves_the_splitter_as_new(first: bytes, second: bytes) -> None:
    splitter = NdjsonSplitter()
    splitter.feed(first)
    splitter.flush()
    assert splitter.feed(second) == ndjson_reference(second)[0]
    assert splitter.flush() == ndjson_reference(second)[1]


def test_ndjson_lone_cr_is_not_a_line_end() -> None:
    """``bytes.splitlines`` would cut here; Ollama's Go scanner, and so we, do not."""
    splitter = NdjsonSplitter()
    assert splitter.feed(b'{"a":"x\ry"}\r\r\n \r\n\x0b\x0c\r\n') == [b'{"a":"x\ry"}\r']
    assert splitter.feed(b"\r") == []
    assert splitter.flush() is None


def raw_segments(data: bytes) -> list[bytes]:
    """Every line as buffered before its LF arrives: the CR of a CRLF included."""
    return data.split(b"\n")


@settings(max_examples=150)
@given(stream=garbage, max_line=st.integers(min_value=0, max_value=24), data=st.data())
def test_ndjson_max_line_never_fires_while_every_line_fits(
    stream: bytes, max_line: int, data: st.DataObject
) -> None:
    """No false alarm under any chunking, and the output is the unlimited one."""
    longest = max(len(segment) for segment in raw_segments(stream))
    if longest > max_line:
        stream = b"\n".join(s[:max_line] for s in raw_segments(stream))
    splitter = NdjsonSplitter(max_line=max_line)
    got: list[bytes] = []
    for chunk in data.draw(cuts(stream)):
        got.extend(splitter.feed(chunk))
        assert splitter.pending <= max_line + 1  # + a CR waiting for its LF
    assert got == ndjson_reference(stream)[0]
    assert splitter.flush() == ndjson_reference(stream)[1]


@settings(max_examples=150)
@given(stream=garbage, max_line=st.integers(min_value=0, max_value=24))
def test_ndjson_max_line_fires_at_the_exact_byte_when_fed_bytewise(
    stream: bytes, max_line: int
) -> None:
    """One byte at a time, the buffer is the line so far: the alarm goes off exactly at
    the byte that takes a line past ``max_line`` (a CR waits for the byte after it), and
    leaves nothing buffered."""
    splitter = NdjsonSplitter(max_line=max_line)
    got: list[bytes] = []
    run = 0
    for i in range(len(stream)):
        byte = stream[i : i + 1]
        run = 0 if byte == b"\n" else run + 1
        # A trailing CR may be half of a CRLF: it counts once the next byte arrives.
        if run - (byte == b"\r") > max_line:
            with pytest.raises(LineTooLong) as info:
                splitter.feed(byte)
            assert splitter.pending == 0
            # The message names sizes only, never the bytes it refused.
            assert str(info.value) == f"line exceeds {max_line} bytes (buffered {run})"
            assert got == ndjson_reference(stream[:i])[0]
            return
        got.extend(splitter.feed(byte))
        assert splitter.pending == run
    # No line was too long: all of it came out.
    assert got == ndjson_reference(stream)[0]
    assert splitter.flush() == ndjson_reference(stream)[1]


@settings(max_examples=150)
@given(stream=garbage, max_line=st.integers(min_value=0, max_value=24), data=st.data())
def test_ndjson_with_max_line_raises_nothing_but_line_too_long(
    stream: bytes, max_line: int, data: st.DataObject
) -> None:
    """Any stream, any chunking: lines come out in order, the buffer stays bounded, and a
    refusal is a LineTooLong that leaves nothing buffered."""
    splitter = NdjsonSplitter(max_line=max_line)
    lines, _ = ndjson_reference(stream)
    got: list[bytes] = []
    for chunk in data.draw(cuts(stream)):
        try:
            got.extend(splitter.feed(chunk))
        except LineTooLong:
            assert splitter.pending == 0
            return
        assert splitter.pending <= max_line + 1  # + a CR waiting for its LF
    assert got == lines


@settings(max_examples=10, phases=(Phase.explicit, Phase.generate))
@given(max_line=st.integers(min_value=1, max_value=64), fill=st.sampled_from(b"ax{"))
def test_ndjson_a_crlf_line_of_exactly_max_line_is_accepted_however_split(
    max_line: int, fill: int
) -> None:
    line = bytes([fill]) * max_line
    splitter = NdjsonSplitter(max_line=max_line)
    assert NdjsonSplitter(max_line=max_line).feed(line + b"\r\n") == [line]  # whole: fine
    assert splitter.feed(line + b"\r") == []  # split between CR and LF: LineTooLong
    assert splitter.feed(b"\n") == [line]


# --------------------------------------------------------------------------- SSE

_SSE_LINE_END = re.compile(r"\r\n|\r|\n")


def sse_reference(data: bytes) -> tuple[list[str], str]:
    """The WHATWG event-stream algorithm over the whole stream, decoded first: one BOM
    dropped, lines split on CRLF/CR/LF, the unterminated last line and any event not
    closed by a blank line ignored. Returns the data of each event and the last type."""
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    *lines, _unterminated = _SSE_LINE_END.split(text)
    events: list[str] = []
    buffer: list[str] = []
    kind = ""
    last = ""
    for line in lines:
        if line == "":
            if buffer:
                events.append("\n".join(buffer))
                last = kind or "message"
            buffer, kind = [], ""
        elif line.startswith(":"):
            continue
        else:
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                buffer.append(value)
            elif name == "event":
                kind = value
    return events, last


def sse_parse(chunks: list[bytes]) -> tuple[list[str], str]:
    parser = SseParser()
    out: list[str] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out, parser.last_event


@settings(max_examples=200)
@given(stream=streams, bom=st.booleans(), data=st.data())
def test_sse_parser_matches_the_reference_under_any_chunking(
    stream: bytes, bom: bool, data: st.DataObject
) -> None:
    if bom:
        stream = b"\xef\xbb\xbf" + stream
    chunks = data.draw(cuts(stream))
    expected = sse_reference(stream)
    assert sse_parse(chunks) == expected
    assert sse_parse([stream]) == expected


@settings(max_examples=200)
@given(stream=streams, data=st.data())
def test_sse_events_are_released_as_soon_as_their_blank_line_arrives(
    stream: bytes, data: st.DataObject
) -> None:
    """After every chunk, exactly the events complete so far have come out."""
    parser = SseParser()
    got: list[str] = []
    fed = b""
    for chunk in data.draw(cuts(stream)):
        got.extend(parser.feed(chunk))
        fed += chunk
        # A CR last in what was fed already ends its line, even if an LF follows.
        assert got == sse_reference(fed)[0]


@settings(max_examples=120)
@given(
    items=st.lists(
        st.one_of(
            (json_values | unicode_text).map(lambda v: ("json", v)),
            st.binary(max_size=30).map(lambda b: ("raw", b)),
            unicode_text.map(lambda t: ("raw", t.encode())),
        ),
        max_size=6,
    ),
    keepalive=st.booleans(),
    ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    data=st.data(),
)
def test_sse_event_and_sse_json_round_trip_through_the_parser(
    items: list[tuple[str, Any]], keepalive: bool, ending: bytes, data: st.DataObject
) -> None:
    """Any JSON value (U+2028, NUL, lone line breaks inside strings) and any payload
    bytes at all come back as written, between comments, in any line-ending style."""
    pieces: list[bytes] = []
    expected: list[str] = []
    for kind, value in items:
        if keepalive:
            pieces.append(b": keep-alive\n\n")
        if kind == "json":
            pieces.append(sse_json(value))
            expected.append("")  # compared as JSON below
        else:
            pieces.append(sse_event(value))
            # Decoding is per line, CR and CRLF become LF: as a browser would read it.
            text = value.decode("utf-8", "replace")
            expected.append(text.replace("\r\n", "\n").replace("\r", "\n"))
    pieces.append(SSE_DONE)
    stream = b"".join(pieces).replace(b"\n", ending)
    got, last = sse_parse(data.draw(cuts(stream)))
    assert got[-1] == "[DONE]"
    assert len(got) == len(expected) + 1
    for (kind, value), text, want in zip(items, got[:-1], expected, strict=True):
        if kind == "json":
            assert json.loads(text) == value
        else:
            assert text == want
    assert last == "message"


@settings(max_examples=100)
@given(values=st.lists(json_values | unicode_text, max_size=6), data=st.data())
def test_the_openai_sdk_reads_our_sse_json_as_we_do(values: list[Any], data: st.DataObject) -> None:
    """U+2028 and U+0085 stay raw in compact JSON; a reader that split on them (as
    ``str.splitlines`` does) would break events, so check the SDK's own reader."""
    stream = b"".join(sse_json(v) for v in values) + SSE_DONE
    chunks = data.draw(cuts(stream))
    sdk = [event.data for event in SSEDecoder().iter_bytes(iter(chunks))]
    ours, _ = sse_parse(chunks)
    assert ours == sdk
    assert [json.loads(text) for text in ours[:-1]] == values


def test_sse_bom_is_dropped_once_and_only_at_the_start() -> None:
    bom = b"\xef\xbb\xbf"
    assert sse_parse([bom + bom + b"data: x\n\n"])[0] == []  # "\ufeffdata" is no field
    assert sse_parse([b"data: " + bom + b"x\n\n"])[0] == ["\ufeffx"]
    assert sse_parse([b"", b"\xef", b"", b"\xbb\xbf", b"data: y\n\n"])[0] == ["y"]
    assert sse_parse([b"\xef\xbb", b"data: z\n\n"])[0] == []  # the line is "\ufffddata: z"
