"""Request bodies sent with a ``Content-Encoding`` (gzip, deflate, br, zstd): decoded
with the decoded size capped, refused clearly when the coding is unknown, stacked or
garbled, and read, checked and charged exactly as the same body sent plain, on both
surfaces. The decoder on its own first, then the gateway in process."""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import brotli
import pytest
import zstandard
from aiohttp import web

from nz_proxy.body import header_fields, read_body
from nz_proxy.decompression import Decoder, requested_coding
from nz_proxy.errors import InvalidRequest, RequestTooLarge, UnsupportedEncoding
from tests.inprocess import FakeBackend, Running, call, chat_frames, gateway


def _deflate_raw(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def _zstd_streamed(data: bytes) -> bytes:
    """zstd frames without a content size, as a streaming compressor writes them."""
    packer = zstandard.ZstdCompressor().compressobj()
    return packer.compress(data) + packer.flush()


COMPRESS: Final[dict[str, Callable[[bytes], bytes]]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}
CODINGS: Final = tuple(COMPRESS)
MiB: Final = 1 << 20


def decode(coding: str, data: bytes, limit: int = 16 * MiB) -> bytes:
    decoder = Decoder(coding, data, limit)
    decoder.run()
    assert decoder.finished
    return decoder.result()


# -- the Content-Encoding header ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "coding"),
    [
        (None, None),
        (b"", None),
        (b"identity", None),
        (b"IDENTITY", None),
        (b"gzip", "gzip"),
        (b" GZip ", "gzip"),
        (b"x-gzip", "gzip"),
        (b"deflate", "deflate"),
        (b"br", "br"),
        (b"zstd", "zstd"),
        (b"identity, br", "br"),
        (b"zstd, , identity", "zstd"),
    ],
)
def test_the_coding_to_undo(value: bytes | None, coding: str | None) -> None:
    assert requested_coding(value) == coding


@pytest.mark.parametrize("value", [b"compress", b"lzma", b"snappy", b"gzip;q=1", b"\x00\xff"])
def test_unknown_codings_are_415_naming_the_ones_accepted(value: bytes) -> None:
    with pytest.raises(UnsupportedEncoding) as refused:
        requested_coding(value)
    assert refused.value.status == 415
    assert "is not supported; send gzip, deflate, br, zstd" in refused.value.message
    assert refused.value.headers() == {"Accept-Encoding": "gzip, deflate, br, zstd"}


@pytest.mark.parametrize("value", [b"gzip, br", b"gzip, gzip", b"deflate,zstd, identity"])
def test_stacked_codings_are_415(value: bytes) -> None:
    with pytest.raises(UnsupportedEncoding, match="more than one Content-Encoding"):
        requested_coding(value)


def test_a_field_on_several_lines_is_one_list() -> None:
    fields = header_fields(
        [(b"content-encoding", b"gzip"), (b"content-length", b"9"), (b"content-encoding", b"br")]
    )
    assert fields == {b"content-encoding": b"gzip, br", b"content-length": b"9"}


# -- the decoder -------------------------------------------------------------------------------

BODY: Final = json.dumps({"model": "llama3.2", "prompt": "ein Satz " * 20_000}).encode()


@pytest.mark.parametrize(
    ("coding", "compress"),
    [*COMPRESS.items(), ("deflate", _deflate_raw), ("zstd", _zstd_streamed)],
    ids=[*CODINGS, "deflate-raw", "zstd-streamed"],
)
def test_every_coding_decodes_to_the_body(coding: str, compress: Callable[[bytes], bytes]) -> None:
    assert decode(coding, compress(BODY)) == BODY


def test_gzip_members_and_zstd_frames_are_read_in_turn() -> None:
    half = len(BODY) // 2
    assert decode("gzip", gzip.compress(BODY[:half]) + gzip.compress(BODY[half:])) == BODY
    packer = zstandard.ZstdCompressor()
    assert decode("zstd", packer.compress(BODY[:half]) + packer.compress(BODY[half:])) == BODY


def test_a_body_of_exactly_the_cap_is_taken() -> None:
    for coding, compress in COMPRESS.items():
        assert len(decode(coding, compress(BODY), limit=len(BODY))) == len(BODY)
        with pytest.raises(RequestTooLarge, match="once decompressed"):
            decode(coding, compress(BODY), limit=len(BODY) - 1)


@pytest.mark.parametrize("coding", CODINGS)
def test_truncated_data_is_a_400_saying_so(coding: str) -> None:
    packed = COMPRESS[coding](BODY)
    with pytest.raises(InvalidRequest) as refused:
        decode(coding, packed[: len(packed) * 2 // 3])
    assert refused.value.message == (
        f"The request body is truncated: it is not valid {coding} data "
        f"(Content-Encoding: {coding})."
    )


@pytest.mark.parametrize("coding", CODINGS)
def test_data_that_is_not_the_coding_is_a_400(coding: str) -> None:
    with pytest.raises(InvalidRequest, match=f"it is not valid {coding} data"):
        decode(coding, BODY)  # plain JSON, labelled as compressed


@pytest.mark.parametrize("coding", CODINGS)
def test_bytes_after_the_end_are_a_400(coding: str) -> None:
    with pytest.raises(InvalidRequest, match=f"it is not valid {coding} data"):
        decode(coding, COMPRESS[coding](BODY) + b"\x00trailing garbage")


def test_a_zstd_frame_wanting_a_huge_window_is_refused() -> None:
    # A 128 MiB window (the library's own limit) is memory the gateway will not give.
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=27)
    packer = zstandard.ZstdCompressor(compression_params=params).compressobj()
    packed = packer.compress(b"x" * 1000) + packer.flush()
    with pytest.raises(InvalidRequest, match="not valid zstd data"):
        decode("zstd", packed)


@pytest.mark.parametrize("coding", CODINGS)
def test_a_bomb_is_413_without_inflating_past_the_cap(coding: str) -> None:
    """10 MiB of zeros (a few kilobytes compressed, 27 bytes as br) against a 1 MiB cap:
    refused, and the memory taken while refusing stays near the cap."""
    bomb = COMPRESS[coding](bytes(10 * MiB))
    assert len(bomb) < 20_000
    decoder = Decoder(coding, bomb, limit=MiB)
    tracemalloc.start()
    try:
        with pytest.raises(RequestTooLarge) as refused:
            decoder.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status == 413
    assert refused.value.message == f"Request body exceeds {MiB} bytes once decompressed."
    assert decoder.size <= MiB + 64 * 1024  # it stopped at the cap, not at 10 MiB
    assert peak < 3 * MiB, peak


def test_decoding_steps_until_asked_and_no_further() -> None:
    decoder = Decoder("gzip", gzip.compress(bytes(4 * MiB)), limit=16 * MiB)
    decoder.run(until=MiB)
    stopped_early = not decoder.finished
    assert stopped_early
    assert MiB <= decoder.size < 2 * MiB
    decoder.run()
    assert decoder.finished
    assert decoder.result() == bytes(4 * MiB)


# -- read_body: on the loop, then in the worker thread ------------------------------------------


def receiving(body: bytes, chunk: int = 65536) -> Callable[[], Any]:
    """An ASGI ``receive`` that delivers ``body`` in chunks."""
    parts = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive() -> dict[str, Any]:
        part = parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    return receive


@pytest.mark.parametrize(
    "plain",
    [
        BODY,  # small once packed: decoded on the loop
        bytes(3 * MiB),  # small packed, big decoded: the first MiB on the loop, then a thread
        random.Random(7).randbytes(200_000),  # big packed: in the thread from the start
    ],
    ids=["small", "inflates-past-1MiB", "big-compressed"],
)
@pytest.mark.parametrize("coding", CODINGS)
async def test_read_body_returns_the_decoded_body(plain: bytes, coding: str) -> None:
    packed_body = COMPRESS[coding](plain)
    fields = header_fields(
        [(b"content-encoding", coding.encode()), (b"content-length", b"%d" % len(packed_body))]
    )
    assert await read_body(receiving(packed_body), fields, 16 * MiB) == plain


async def test_read_body_refuses_the_coding_before_reading() -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    with pytest.raises(UnsupportedEncoding):
        await read_body(receive, {b"content-encoding": b"compress"}, MiB)


# -- through the gateway, on both surfaces ------------------------------------------------------

PROMPT: Final = "zwei Worte " * 4000
CHAT: Final = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": PROMPT}],
    "stream": False,
}
SURFACES: Final = ["/api/chat", "/v1/chat/completions"]


async def backend_chat(request: web.BaseRequest) -> web.StreamResponse:
    return web.json_response(chat_frames(["ja"])[-1])


def packed(coding: str, body: dict[str, Any]) -> bytes:
    return COMPRESS[coding](json.dumps(body).encode())


@pytest.fixture
async def running(tmp_path: Path) -> Any:
    async with (
        FakeBackend(backend_chat) as backend,
        gateway(backend.url, tmp_path, max_request_bytes=MiB) as gw,
    ):
        yield gw, backend


def headers(gw: Running, key: str | None = None, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or gw.key}", **extra}


@pytest.mark.parametrize("path", SURFACES)
@pytest.mark.parametrize("coding", [*CODINGS, "identity"])
async def test_a_compressed_body_is_served_like_the_plain_one(
    running: tuple[Running, FakeBackend], path: str, coding: str
) -> None:
    gw, backend = running
    raw = json.dumps(CHAT).encode()
    body = raw if coding == "identity" else packed(coding, CHAT)
    answer = await call(
        gw.app, "POST", path, headers=headers(gw, **{"Content-Encoding": coding}), body=body
    )
    assert answer.status == 200, answer.body
    _, upstream_path, forwarded = backend.received[-1]
    assert upstream_path == "/api/chat"
    assert json.loads(forwarded)["messages"] == CHAT["messages"]  # read from the decoded body


@pytest.mark.parametrize("path", SURFACES)
async def test_the_reservation_is_computed_from_the_decoded_body(
    running: tuple[Running, FakeBackend], path: str
) -> None:
    """The same request plain and gzipped (44 KB, about 200 bytes packed) reserves the
    same tokens: a reservation taken from the wire bytes would be 200 times smaller."""
    gw, _ = running
    remaining = []
    for coding in ("identity", "gzip"):
        key = await gw.new_key(daily=1_000_000)
        body = json.dumps(CHAT).encode() if coding == "identity" else packed(coding, CHAT)
        answer = await call(
            gw.app,
            "POST",
            path,
            headers=headers(gw, key, **{"Content-Encoding": coding}),
            body=body,
        )
        assert answer.status == 200, answer.body
        remaining.append(int(answer.headers["x-budget-tokens-remaining"]))
    assert remaining[0] == remaining[1]
    assert remaining[1] <= 1_000_000 - len(PROMPT) // 4


@pytest.mark.parametrize("path", SURFACES)
async def test_a_bomb_is_413_on_both_surfaces(
    running: tuple[Running, FakeBackend], path: str
) -> None:
    gw, backend = running
    bomb = gzip.compress(json.dumps({**CHAT, "pad": "0" * (10 * MiB)}).encode())
    assert len(bomb) < 100_000  # under the 1 MiB cap as sent
    answer = await call(
        gw.app, "POST", path, headers=headers(gw, **{"Content-Encoding": "gzip"}), body=bomb
    )
    assert answer.status == 413
    assert "exceeds 1048576 bytes once decompressed" in answer.body.decode()
    assert backend.paths().count("/api/chat") == 0


@pytest.mark.parametrize("path", [*SURFACES, "/api/show"])
async def test_refusals_of_the_coding_on_every_body_route(
    running: tuple[Running, FakeBackend], path: str
) -> None:
    gw, _ = running
    body = {"model": "llama3.2"} if path == "/api/show" else CHAT
    zipped = packed("gzip", body)

    async def send(body: bytes, **coding: str) -> Any:
        return await call(gw.app, "POST", path, headers=headers(gw, **coding), body=body)

    unknown = await send(zipped, **{"Content-Encoding": "compress"})
    assert unknown.status == 415
    assert unknown.headers["accept-encoding"] == "gzip, deflate, br, zstd"
    assert "Content-Encoding 'compress' is not supported" in unknown.body.decode()
    # Two codings on one line, and on two lines (header names differ only by case here,
    # so the request carries two `content-encoding` lines).
    stacked = await send(packed("br", body), **{"Content-Encoding": "gzip, br"})
    assert stacked.status == 415
    two_lines = await send(zipped, **{"Content-Encoding": "br", "content-encoding": "gzip"})
    assert two_lines.status == 415
    assert "more than one Content-Encoding ('br, gzip')" in two_lines.body.decode()
    garbled = await send(zipped[:-12], **{"Content-Encoding": "gzip"})
    assert garbled.status == 400
    assert "The request body is truncated: it is not valid gzip data" in garbled.body.decode()
    if path.startswith("/v1"):
        assert garbled.json()["error"]["code"] == "invalid_request"
        assert unknown.json()["error"]["code"] == "unsupported_encoding"
    else:
        assert set(unknown.json()) == {"error"}


async def test_a_compressed_show_is_read(running: tuple[Running, FakeBackend]) -> None:
    gw, backend = running
    answer = await call(
        gw.app,
        "POST",
        "/api/show",
        headers=headers(gw, **{"Content-Encoding": "zstd"}),
        body=packed("zstd", {"model": "llama3.2"}),
    )
    # The fake backend answers every path with a chat frame: what matters is that the
    # decoded body was read, checked and forwarded.
    _, upstream_path, forwarded = backend.received[-1]
    assert upstream_path == "/api/show", answer.body
    assert json.loads(forwarded)["model"] == "llama3.2"
