"""Request bodies sent compressed (``Content-Encoding``, RFC 9110 §8.4).

A body may come as gzip, deflate, br or zstd; the gateway undoes one coding and reads
the result like any other body. The decoded size is capped by ``MAX_REQUEST_BYTES`` as
it grows: each step asks the decoder for a bounded amount of output (zlib's
``max_length``, brotli's ``output_buffer_limit``, zstandard's streaming reader), so a
bomb (a few kilobytes that inflate to gigabytes) is a 413 after at most the cap was
produced, never a process out of memory.

:class:`Decoder` is pure and steps on demand; :func:`nz_proxy.body.read_body` runs the
first steps on the event loop and the rest, for big bodies, in a worker thread.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, Protocol

import brotli
import zstandard

from nz_proxy.errors import InvalidRequest, RequestTooLarge, UnsupportedEncoding

__all__ = ["CODINGS", "Decoder", "requested_coding"]

CODINGS: Final = ("gzip", "deflate", "br", "zstd")
# RFC 9110 §8.4.1.3: `x-gzip` is gzip.
_ALIASES: Final = {"x-gzip": "gzip"}
# Output asked of a decoder per step: small enough that a step never holds the event
# loop for long (inflating 256 KiB takes about 1 ms).
STEP_BYTES: Final = 256 << 10
# RFC 9659 §3: a zstd decoder for HTTP needs no window above 8 MiB; a frame asking for
# more is refused rather than given the memory.
ZSTD_MAX_WINDOW: Final = 8 << 20


def requested_coding(value: bytes | None) -> str | None:
    """The content coding to undo for a ``Content-Encoding`` value, ``None`` for none.

    ``identity`` (and an empty value) means none. One coding at a time: a body encoded
    twice is refused rather than inflated twice.

    Raises:
        UnsupportedEncoding: an unknown coding, or more than one.
    """
    if value is None:
        return None
    text = value.decode("latin-1")
    tokens = [_ALIASES.get(t, t) for t in (t.strip().lower() for t in text.split(",")) if t]
    codings = [t for t in tokens if t != "identity"]
    if not codings:
        return None
    shown = "".join(c if c.isprintable() else "?" for c in text.strip())[:60]
    if len(codings) > 1:
        raise UnsupportedEncoding(
            f"The body has more than one Content-Encoding ('{shown}'); "
            "encode it once, with one of gzip, deflate, br or zstd.",
            accepted=CODINGS,
        )
    if codings[0] not in CODINGS:
        raise UnsupportedEncoding(
            f"Content-Encoding '{shown}' is not supported; send gzip, deflate, br, zstd "
            "or an uncompressed body.",
            accepted=CODINGS,
        )
    return codings[0]


class _Garbled(Exception):
    """The compressed data is not what its coding says; the message says how."""


class _Stream(Protocol):
    @property
    def done(self) -> bool: ...
    def step(self, size: int) -> bytes: ...


class _Zlib:
    """gzip and deflate. A gzip body may hold several members (RFC 1952), read in turn."""

    def __init__(self, data: bytes, wbits: int, *, members: bool) -> None:
        self._wbits = wbits
        self._members = members
        self._inflate = zlib.decompressobj(wbits)
        self._pending = data

    @property
    def done(self) -> bool:
        return self._inflate.eof and not self._pending

    def step(self, size: int) -> bytes:
        out = self._inflate.decompress(self._pending, size)
        self._pending = self._inflate.unconsumed_tail
        if self._inflate.eof:
            rest = self._inflate.unused_data
            if rest and not self._members:
                raise _Garbled("has bytes after its end")
            if rest:
                self._inflate = zlib.decompressobj(self._wbits)
                self._pending = rest
        elif not out and not self._pending:
            raise _Garbled("is truncated")
        return out


def _zlib_wrapped(data: bytes) -> bool:
    """Whether ``data`` starts with a zlib header (RFC 1950). HTTP's deflate is zlib
    data, but some clients send bare deflate (RFC 1951): both are read."""
    return (
        len(data) >= 2
        and data[0] & 0x0F == 8
        and data[0] >> 4 <= 7
        and (data[0] << 8 | data[1]) % 31 == 0
    )


class _Brotli:
    def __init__(self, data: bytes) -> None:
        self._decoder = brotli.Decompressor()
        self._pending = data

    @property
    def done(self) -> bool:
        return bool(self._decoder.is_finished())

    def step(self, size: int) -> bytes:
        # The input goes in once; after a call whose output hit the limit, brotli takes
        # only empty input until it has given out what it holds.
        data, self._pending = self._pending, b""
        out: bytes = self._decoder.process(data, output_buffer_limit=size)
        if not out and not data and not self._decoder.is_finished():
            raise _Garbled("is truncated")
        return out


_ZSTD_MAGIC: Final = 0xFD2FB528
_ZSTD_SKIPPABLE: Final = range(0x184D2A50, 0x184D2A60)


def _check_zstd_frames(data: bytes) -> None:
    """Refuse ``data`` unless it is whole zstd frames and nothing else (RFC 8878 §3.1):
    the streaming reader stops quietly where its input ends, so a truncated body would
    otherwise read as a short one."""
    pos = 0
    while pos < len(data):
        magic = int.from_bytes(data[pos : pos + 4], "little")
        if magic in _ZSTD_SKIPPABLE:
            pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
            continue
        if magic != _ZSTD_MAGIC:
            raise _Garbled("has bytes after its end" if pos else "is corrupt")
        try:
            header = zstandard.frame_header_size(data[pos : pos + 18])
        except zstandard.ZstdError:
            raise _Garbled("is truncated") from None
        has_checksum = data[pos + 4] & 0x04
        pos += header
        while True:  # blocks: a 3-byte header, then the block's bytes (one for RLE)
            if pos + 3 > len(data):
                raise _Garbled("is truncated")
            block = int.from_bytes(data[pos : pos + 3], "little")
            pos += 3 + (1 if (block >> 1) & 3 == 1 else block >> 3)
            if block & 1:
                break
        pos += 4 if has_checksum else 0
    if pos > len(data):
        raise _Garbled("is truncated")


class _Zstd:
    def __init__(self, data: bytes) -> None:
        _check_zstd_frames(data)
        decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        self._reader = decompressor.stream_reader(data, read_across_frames=True)
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def step(self, size: int) -> bytes:
        out = self._reader.read(size)
        self._done = not out
        return out


def _open(coding: str, data: bytes) -> _Stream:
    match coding:
        case "gzip":
            return _Zlib(data, 16 + zlib.MAX_WBITS, members=True)
        case "deflate":
            wbits = zlib.MAX_WBITS if _zlib_wrapped(data) else -zlib.MAX_WBITS
            return _Zlib(data, wbits, members=False)
        case "br":
            return _Brotli(data)
        case _:
            return _Zstd(data)


@contextmanager
def _reading(coding: str) -> Iterator[None]:
    """A decoder's complaint as the client's 400."""
    try:
        yield
    except _Garbled as why:
        reason = str(why)
    except (zlib.error, brotli.error, zstandard.ZstdError):
        reason = "is corrupt"
    else:
        return
    raise InvalidRequest(
        f"The request body {reason}: it is not valid {coding} data (Content-Encoding: {coding})."
    )


class Decoder:
    """Undoes one content coding of ``data``, step by step, refusing output beyond
    ``limit`` bytes as soon as it appears: each step asks for no more than the room left.
    Nothing is read before the first :meth:`run`."""

    def __init__(self, coding: str, data: bytes, limit: int) -> None:
        self.coding = coding
        self.limit = limit
        self.size = 0
        self.data = data
        self._stream: _Stream | None = None
        self._chunks: list[bytes] = []

    @property
    def finished(self) -> bool:
        return self._stream is not None and self._stream.done

    def run(self, until: int | None = None) -> None:
        """Decode until ``until`` bytes are out, or to the end.

        Raises:
            RequestTooLarge: the decoded body exceeds ``limit``.
            InvalidRequest: the data is not valid for its coding.
        """
        with _reading(self.coding):
            if self._stream is None:
                self._stream = _open(self.coding, self.data)
            while not self._stream.done and (until is None or self.size < until):
                chunk = self._stream.step(min(STEP_BYTES, self.limit + 1 - self.size))
                self.size += len(chunk)
                if self.size > self.limit:
                    self._chunks.clear()
                    raise RequestTooLarge(self.limit, decoded=True)
                self._chunks.append(chunk)

    def result(self) -> bytes:
        """The decoded body (once :attr:`finished`)."""
        return b"".join(self._chunks)
