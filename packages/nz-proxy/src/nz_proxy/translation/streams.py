"""Streamed answers: native NDJSON frames in, the client's stream out.

:class:`ChatStream` and :class:`CompletionStream` turn ``/api/chat`` and
``/api/generate`` frames into OpenAI's server-sent events; :class:`NativeStreamTap`
watches a native stream that is forwarded byte for byte and counts what it carried.
Each keeps the counters accounting needs, and never raises on upstream garbage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from nz_proxy.translation.framing import SSE_DONE
from nz_proxy.translation.replies import (
    call_id_base,
    chat_finish,
    response_tool_calls,
    text_finish,
    token_count,
    usage_object,
)

__all__ = ["ChatStream", "CompletionStream", "NativeStreamTap", "native_error_line"]

_encode = msgspec.json.Encoder().encode


class _Message(msgspec.Struct):
    content: str = ""
    thinking: str = ""
    tool_calls: list[Any] | None = None


class _Frame(msgspec.Struct):
    """The fields of a native stream line we read; the rest is skipped while decoding."""

    message: _Message | None = None
    response: str = ""
    thinking: str = ""
    done: bool = False
    done_reason: str = ""
    prompt_eval_count: int = 0
    eval_count: int = 0
    error: str | None = None


_decode_frame = msgspec.json.Decoder(_Frame).decode
_BAD_FRAME: Final = "The model backend sent an invalid stream frame."


def _error_event(message: str) -> bytes:
    return (
        b'data: {"error":{"message":'
        + _encode(message)
        + b',"type":"server_error","param":null,"code":null}}\n\n'
    )


def _chunk_head(object_name: bytes, completion_id: str, created: int, model: str) -> bytes:
    """Everything of a chunk up to the value of ``choices``; the same on every chunk."""
    return b"".join(
        (
            b'data: {"id":',
            _encode(completion_id),
            b',"object":"',
            object_name,
            b'","created":',
            _encode(created),
            b',"model":',
            _encode(model),
            b',"system_fingerprint":"fp_ollama","choices":',
        )
    )


class _SseStream:
    """Shared state of the two SSE translators: counters, usage chunk, error event."""

    __slots__ = (
        "_close",
        "_head",
        "_include_usage",
        "_usage_null",
        "completion_tokens",
        "content_frames",
        "done",
        "error_message",
        "prompt_tokens",
    )

    def __init__(self, head: bytes, include_usage: bool) -> None:
        self._head = head
        self._include_usage = include_usage
        # With include_usage OpenAI puts "usage": null on every other chunk; without it,
        # no usage key at all (and the SDK only reads it on the last chunk).
        self._usage_null = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._close = b',"logprobs":null,"finish_reason":null}]' + self._usage_null
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.content_frames = 0
        self.done = False
        self.error_message: str | None = None

    @property
    def finished(self) -> bool:
        """No more output will be produced (final frame or error seen)."""
        return self.done or self.error_message is not None

    def error(self, message: str) -> bytes:
        """One mid-stream error event in OpenAI's shape; the stream is over after it.

        No ``[DONE]`` follows: the SDK raises ``APIError`` on the event anyway, and a
        stream without its terminator tells any other reader it was cut short. Returns
        ``b""`` once the stream has finished (after the final frame or a first error).
        """
        if self.finished:
            return b""
        self.error_message = message
        return _error_event(message)

    def _finish(self, finish_chunk: bytes) -> bytes:
        parts = [finish_chunk]
        if self._include_usage:
            usage = usage_object(self.prompt_tokens, self.completion_tokens)
            parts.append(self._head + b'[],"usage":' + _encode(usage) + b"}\n\n")
        parts.append(SSE_DONE)
        return b"".join(parts)


class ChatStream(_SseStream):
    """Translates a streamed ``/api/chat`` answer into ``chat.completion.chunk`` SSE bytes.

    Feed each native frame (:meth:`feed` for a decoded dict, :meth:`feed_line` for the
    raw NDJSON line, which decodes only the fields needed); each call returns the bytes
    to send, possibly ``b""``. The first chunk carries ``delta.role``; content goes to
    ``delta.content``, thinking to ``delta.reasoning`` (Ollama's non-standard name),
    tool calls to ``delta.tool_calls`` (whole calls, each with a stream-wide ``index``,
    an ``id``, ``type`` and JSON-string ``arguments``). The final frame adds a finish
    chunk with an empty delta, then with ``include_usage`` a ``choices: []`` usage
    chunk, then ``data: [DONE]``. A native ``{"error": …}`` frame, or a line that does
    not decode, becomes :meth:`error`'s event.

    Counters for accounting: ``prompt_tokens`` and ``completion_tokens`` (from the final
    frame), ``content_frames`` (frames that carried content, thinking or tool calls: the
    fallback count when the final frame never comes), ``done`` and ``error_message``.
    """

    __slots__ = ("_id_base", "_open", "_role_sent", "_tool_calls")

    def __init__(
        self, *, model: str, completion_id: str, created: int, include_usage: bool
    ) -> None:
        head = _chunk_head(b"chat.completion.chunk", completion_id, created, model)
        super().__init__(head, include_usage)
        self._open = head + b'[{"index":0,"delta":'
        self._id_base = call_id_base(completion_id)
        self._role_sent = False
        self._tool_calls = 0

    def feed(self, frame: Mapping[str, Any]) -> bytes:
        """SSE bytes for one decoded native frame."""
        if self.finished:
            return b""
        error = frame.get("error")
        if error is not None:
            return self.error(error if isinstance(error, str) else _BAD_FRAME)
        message = frame.get("message")
        content = thinking = ""
        calls = None
        if isinstance(message, Mapping):
            value = message.get("content")
            content = value if isinstance(value, str) else ""
            value = message.get("thinking")
            thinking = value if isinstance(value, str) else ""
            value = message.get("tool_calls")
            calls = value if isinstance(value, list) else None
        return self._step(
            content,
            thinking,
            calls,
            frame.get("done") is True,
            frame.get("done_reason"),
            token_count(frame.get("prompt_eval_count")),
            token_count(frame.get("eval_count")),
        )

    def feed_line(self, line: bytes) -> bytes:
        """SSE bytes for one raw native NDJSON line."""
        if self.finished:
            return b""
        try:
            frame = _decode_frame(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self.error(_BAD_FRAME)
        if frame.error is not None:
            return self.error(frame.error)
        message = frame.message or _Message()
        return self._step(
            message.content,
            message.thinking,
            message.tool_calls,
            frame.done,
            frame.done_reason,
            token_count(frame.prompt_eval_count),
            token_count(frame.eval_count),
        )

    def _step(
        self,
        content: str,
        thinking: str,
        calls: list[Any] | None,
        done: bool,
        done_reason: object,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> bytes:
        out = b""
        if content or thinking or calls:
            self.content_frames += 1
            delta: dict[str, Any] = {}
            if not self._role_sent:
                delta["role"] = "assistant"
                self._role_sent = True
            if content:
                delta["content"] = content
            if thinking:
                delta["reasoning"] = thinking
            if calls:
                items = response_tool_calls(calls, self._id_base, self._tool_calls, with_index=True)
                self._tool_calls += len(items)
                if items:
                    delta["tool_calls"] = items
            out = self._open + _encode(delta) + self._close
        if not done:
            return out
        self.done = True
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        if not self._role_sent:
            # OpenAI always opens with the role; keep that even for an empty answer.
            self._role_sent = True
            out += self._open + b'{"role":"assistant","content":""}' + self._close
        finish = chat_finish(done_reason, self._tool_calls > 0)
        return out + self._finish(
            self._open
            + b'{},"logprobs":null,"finish_reason":"'
            + finish.encode()
            + b'"}]'
            + self._usage_null
        )


class CompletionStream(_SseStream):
    """Translates a streamed ``/api/generate`` answer into ``text_completion`` SSE bytes.

    Like :class:`ChatStream`: each text frame becomes a chunk with ``choices[0].text``;
    the final frame's chunk (its own text, usually empty) carries ``finish_reason``,
    followed by the usage chunk when asked and ``data: [DONE]``. Thinking has no place in
    a completion, so it is not sent, but frames carrying it count as content frames
    (those tokens are generated and billed).
    """

    __slots__ = ("_open",)

    def __init__(
        self, *, model: str, completion_id: str, created: int, include_usage: bool
    ) -> None:
        head = _chunk_head(b"text_completion", completion_id, created, model)
        super().__init__(head, include_usage)
        self._open = head + b'[{"text":'
        self._close = b',"index":0,"logprobs":null,"finish_reason":null}]' + self._usage_null

    def feed(self, frame: Mapping[str, Any]) -> bytes:
        """SSE bytes for one decoded native frame."""
        if self.finished:
            return b""
        error = frame.get("error")
        if error is not None:
            return self.error(error if isinstance(error, str) else _BAD_FRAME)
        text = frame.get("response")
        thinking = frame.get("thinking")
        return self._step(
            text if isinstance(text, str) else "",
            isinstance(thinking, str) and bool(thinking),
            frame.get("done") is True,
            frame.get("done_reason"),
            token_count(frame.get("prompt_eval_count")),
            token_count(frame.get("eval_count")),
        )

    def feed_line(self, line: bytes) -> bytes:
        """SSE bytes for one raw native NDJSON line."""
        if self.finished:
            return b""
        try:
            frame = _decode_frame(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self.error(_BAD_FRAME)
        if frame.error is not None:
            return self.error(frame.error)
        return self._step(
            frame.response,
            bool(frame.thinking),
            frame.done,
            frame.done_reason,
            token_count(frame.prompt_eval_count),
            token_count(frame.eval_count),
        )

    def _step(
        self,
        text: str,
        thinking: bool,
        done: bool,
        done_reason: object,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> bytes:
        if text or thinking:
            self.content_frames += 1
        if not done:
            return self._open + _encode(text) + self._close if text else b""
        self.done = True
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        return self._finish(
            self._open
            + _encode(text)
            + b',"index":0,"logprobs":null,"finish_reason":"'
            + text_finish(done_reason).encode()
            + b'"}]'
            + self._usage_null
        )


class NativeStreamTap:
    """Watches a native NDJSON stream that is forwarded byte for byte (never re-encoded).

    Feed each complete line (or a whole non-streamed JSON body): the tap decodes only
    the fields it needs and tracks ``prompt_tokens``/``completion_tokens`` (the final
    frame's ``prompt_eval_count``/``eval_count``), ``content_frames`` (frames with
    content, thinking or tool calls, for chat and generate alike), ``done`` and
    ``error_message`` (an ``{"error": …}`` line). It never raises on upstream garbage;
    lines it cannot read are counted in ``invalid_lines``.
    """

    __slots__ = (
        "completion_tokens",
        "content_frames",
        "done",
        "error_message",
        "invalid_lines",
        "prompt_tokens",
    )

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.content_frames = 0
        self.done = False
        self.error_message: str | None = None
        self.invalid_lines = 0

    def feed(self, line: bytes) -> None:
        """Account for one native line."""
        self._account(line, whole=False)

    def feed_whole(self, body: bytes) -> None:
        """Account for a whole (non-streamed) answer. Its counts are read whether or not
        it says ``done``: embedding answers have no ``done`` field at all."""
        self._account(body, whole=True)

    def _account(self, line: bytes, *, whole: bool) -> None:
        try:
            frame = _decode_frame(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.invalid_lines += 1
            return
        if frame.error is not None:
            self.error_message = frame.error
            return
        message = frame.message
        if (
            frame.response
            or frame.thinking
            or (message and (message.content or message.thinking or message.tool_calls))
        ):
            self.content_frames += 1
        if frame.done or whole:
            self.done = True
            self.prompt_tokens = token_count(frame.prompt_eval_count)
            self.completion_tokens = token_count(frame.eval_count)


def native_error_line(message: str) -> bytes:
    """An Ollama-shaped error line for an NDJSON stream: ``{"error":"…"}\\n``."""
    return b'{"error":' + _encode(message) + b"}\n"
