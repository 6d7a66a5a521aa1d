"""How each endpoint's answer is shaped from the backend's native answer, and what it
counts for accounting (SPEC §4.7-4.8, §6.3).

An :class:`Answer` is made per request. Streamed, it is fed the backend's NDJSON lines
one at a time and returns the bytes to send: the same line for the native surface, SSE
events for the OpenAI one. Whole, it turns the backend's JSON body into the client's.
Either way it tracks the tokens the request used. The OpenAI answers also take several
choices (a :class:`ChoicesAnswer`: ``n`` > 1, a batch of prompts), one backend answer
each, in one body or one stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final, Protocol

import msgspec
import structlog

from nz_proxy.errors import UpstreamUnavailable
from nz_proxy.translation.replies import (
    chat_response,
    completion_response,
    embeddings_response,
    new_completion_id,
)
from nz_proxy.translation.responses import MEDIA_JSON, MEDIA_NDJSON, MEDIA_SSE
from nz_proxy.translation.streams import (
    ChatStream,
    ChoicesStream,
    CompletionStream,
    NativeStreamTap,
    native_error_line,
)

__all__ = [
    "Answer",
    "ChatAnswer",
    "ChoicesAnswer",
    "CompletionAnswer",
    "EmbeddingsAnswer",
    "NativeAnswer",
    "StreamingAnswer",
]

_decode: Final = msgspec.json.Decoder().decode
_encode: Final = msgspec.json.Encoder().encode

log = structlog.get_logger("nz_proxy.translation.answers")

# What a client sees when the backend reports an error mid-stream. The backend's own
# text (which can name internal hosts) goes to the log only (SPEC §6.1).
BACKEND_FAILED: Final = "The model backend failed during the stream."
_ERROR_LINE: Final = b'{"error"'


def _backend_error(line: bytes) -> None:
    log.warning("backend_stream_error", line=line[:300].decode("utf-8", "replace"))


class Answer(Protocol):
    """One request's answer as a whole body, and the tokens it used."""

    whole_media: bytes

    def whole(self, body: bytes) -> bytes:
        """The client's body for the backend's complete JSON body."""
        ...

    def usage(self, prompt_estimate: int) -> tuple[int, int]:
        """(tokens in, tokens out). A stream cut before its final frame counts the
        content frames it delivered, and the prompt at its estimate."""
        ...


class StreamingAnswer(Answer, Protocol):
    """An answer that can also be streamed, line by line."""

    stream_media: bytes

    def line(self, line: bytes) -> bytes:
        """Bytes to send for one native NDJSON line (possibly none)."""
        ...

    def error(self, message: str) -> bytes:
        """The one error frame that ends a failed stream, in its own format."""
        ...

    @property
    def finished(self) -> bool:
        """The final frame (or an error line) has been seen."""
        ...

    @property
    def failed(self) -> bool:
        """The stream ended with an error (the backend's, or the gateway's own)."""
        ...


class ChoicesAnswer(StreamingAnswer, Protocol):
    """An answer of several choices, each from its own backend answer (in choice
    order); :meth:`~StreamingAnswer.line` and :meth:`~Answer.whole` serve one choice."""

    def choice_line(self, index: int, line: bytes) -> bytes:
        """Bytes to send for one native line of choice ``index``'s stream."""
        ...

    def choice_finished(self, index: int) -> bool:
        """Choice ``index``'s stream has seen its final frame (or an error)."""
        ...

    def read_choice(self, index: int, body: bytes) -> None:
        """Take choice ``index``'s complete JSON body (:class:`UpstreamUnavailable` when
        it is not one)."""
        ...

    def whole_body(self) -> bytes:
        """The client's body, once every choice has been read."""
        ...

    def choices_usage(self, estimates: Sequence[int], answered: Sequence[bool]) -> tuple[int, int]:
        """(tokens in, tokens out) of every choice whose backend answered (a stream cut
        short counts as in :meth:`~Answer.usage`, with that choice's estimate)."""
        ...


def _native(body: bytes) -> dict[str, Any]:
    try:
        value = _decode(body)
    except msgspec.DecodeError:
        raise UpstreamUnavailable from None
    if not isinstance(value, dict):
        raise UpstreamUnavailable
    return value


def _counts(native: dict[str, Any]) -> tuple[int, int]:
    return int(native.get("prompt_eval_count") or 0), int(native.get("eval_count") or 0)


class NativeAnswer:
    """Ollama's own surface: lines and bodies are forwarded byte for byte."""

    stream_media = MEDIA_NDJSON
    whole_media = MEDIA_JSON

    def __init__(self, *, counts_prompt: bool = True) -> None:
        self.tap = NativeStreamTap()
        # The legacy /api/embeddings answer carries no prompt_eval_count at all.
        self.counts_prompt = counts_prompt

    def line(self, line: bytes) -> bytes:
        self.tap.feed(line)
        if line.startswith(_ERROR_LINE) and self.tap.error_message is not None:
            _backend_error(line)
            return native_error_line(BACKEND_FAILED)
        return line + b"\n"

    def error(self, message: str) -> bytes:
        return native_error_line(message)

    def whole(self, body: bytes) -> bytes:
        self.tap.feed_whole(body)
        return body

    @property
    def finished(self) -> bool:
        return self.tap.done or self.tap.error_message is not None

    @property
    def failed(self) -> bool:
        return self.tap.error_message is not None

    def usage(self, prompt_estimate: int) -> tuple[int, int]:
        tap = self.tap
        if not tap.done:
            return prompt_estimate, tap.content_frames
        prompt = tap.prompt_tokens if self.counts_prompt else prompt_estimate
        return prompt, tap.completion_tokens


class _SseAnswer:
    """What the two OpenAI generating routes share: one stream per choice (merged when
    there are several), and the whole answer built from every choice's native one.
    Subclasses name their id prefix, their stream and their whole-response builder."""

    stream_media = MEDIA_SSE
    whole_media = MEDIA_JSON
    _id_prefix: str
    _stream_type: type[ChatStream] | type[CompletionStream]
    _response: Callable[..., dict[str, Any]]

    def __init__(
        self, model: str, include_usage: bool, *, choices: int = 1, logprobs: bool = False
    ) -> None:
        self.model = model
        self.id = new_completion_id(self._id_prefix)
        self.created = int(time.time())
        streams = [
            self._stream_type(
                model=model,
                completion_id=self.id,
                created=self.created,
                include_usage=include_usage,
                index=index,
                logprobs=logprobs,
                ends=choices == 1,
            )
            for index in range(choices)
        ]
        self._choices = streams
        # Every choice's native answer → the client's body.
        self._respond = partial(
            type(self)._response,
            model=model,
            completion_id=self.id,
            created=self.created,
            logprobs=logprobs,
        )
        self._stream: ChatStream | CompletionStream | ChoicesStream = (
            streams[0] if len(streams) == 1 else ChoicesStream(streams, include_usage=include_usage)
        )
        self._read: dict[int, dict[str, Any]] = {}  # choice → its whole native answer

    def line(self, line: bytes) -> bytes:
        return self.choice_line(0, line)

    def choice_line(self, index: int, line: bytes) -> bytes:
        if line.startswith(_ERROR_LINE):
            _backend_error(line)
            return self._stream.error(BACKEND_FAILED)
        stream = self._stream
        if isinstance(stream, ChoicesStream):
            return stream.feed_choice(index, line)
        return stream.feed_line(line)

    def choice_finished(self, index: int) -> bool:
        return self._choices[index].finished or self._stream.finished

    def error(self, message: str) -> bytes:
        return self._stream.error(message)

    @property
    def finished(self) -> bool:
        return self._stream.finished

    @property
    def failed(self) -> bool:
        return self._stream.error_message is not None

    def usage(self, prompt_estimate: int) -> tuple[int, int]:
        return self.choices_usage([prompt_estimate], [True])

    def choices_usage(self, estimates: Sequence[int], answered: Sequence[bool]) -> tuple[int, int]:
        tokens_in = tokens_out = 0
        choices = zip(self._choices, estimates, answered, strict=True)
        for index, (stream, estimate, spoke) in enumerate(choices):
            read = self._read.get(index)
            if read is not None:
                counts = _counts(read)
                tokens_in += counts[0]
                tokens_out += counts[1]
            elif not spoke:
                continue
            elif stream.done:
                tokens_in += stream.prompt_tokens
                tokens_out += stream.completion_tokens
            else:
                tokens_in += estimate
                tokens_out += stream.content_frames
        return tokens_in, tokens_out

    def whole(self, body: bytes) -> bytes:
        self.read_choice(0, body)
        return self.whole_body()

    def read_choice(self, index: int, body: bytes) -> None:
        self._read[index] = _native(body)

    def whole_body(self) -> bytes:
        return _encode(self._respond([self._read[i] for i in range(len(self._choices))]))


class ChatAnswer(_SseAnswer):
    """``/v1/chat/completions``: SSE chunks or one ``chat.completion``; ``choices``
    backend answers make as many choices."""

    _id_prefix = "chatcmpl"
    _stream_type = ChatStream
    _response = staticmethod(chat_response)


class CompletionAnswer(_SseAnswer):
    """``/v1/completions``: legacy text completions (``choices`` as for chat)."""

    _id_prefix = "cmpl"
    _stream_type = CompletionStream
    _response = staticmethod(completion_response)


class EmbeddingsAnswer:
    """``/v1/embeddings``: never streamed."""

    whole_media = MEDIA_JSON

    def __init__(self, model: str, encoding_format: str) -> None:
        self.model = model
        self.encoding_format = encoding_format
        self._prompt = 0

    def whole(self, body: bytes) -> bytes:
        native = _native(body)
        self._prompt = _counts(native)[0]
        return _encode(
            embeddings_response(native, model=self.model, encoding_format=self.encoding_format)
        )

    def usage(self, prompt_estimate: int) -> tuple[int, int]:
        return self._prompt, 0
