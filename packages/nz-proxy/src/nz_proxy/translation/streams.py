"""Streamed answers: native NDJSON frames in, the client's stream out.

:class:`ChatStream` and :class:`CompletionStream` turn ``/api/chat`` and
``/api/generate`` frames into OpenAI's server-sent events, for one choice;
:class:`ChoicesStream` merges several of them into one stream (``n`` > 1, a batch of
prompts); :class:`NativeStreamTap` watches a native stream that is forwarded byte for
byte and counts what it carried. Each keeps the counters accounting needs, and never
raises on upstream garbage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from nz_proxy.translation.framing import SSE_DONE
from nz_proxy.translation.replies import (
    call_id_base,
    chat_finish,
    chat_logprobs,
    response_tool_calls,
    text_finish,
    text_logprobs,
    token_count,
    usage_object,
)

__all__ = [
    "ChatStream",
    "ChoicesStream",
    "CompletionStream",
    "NativeStreamTap",
    "native_error_line",
]

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
    # Token entries (checked where they are read): a frame may carry only these.
    logprobs: list[Any] | None = None


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


def _stream_end(head: bytes, include_usage: bool, prompt: int, completion: int) -> bytes:
    """What follows the last finish chunk: the usage chunk when asked, then ``[DONE]``."""
    if not include_usage:
        return SSE_DONE
    usage = _encode(usage_object(prompt, completion))
    return head + b'[],"usage":' + usage + b"}\n\n" + SSE_DONE


class _SseStream:
    """Shared state of the two SSE translators: counters, usage chunk, error event.

    ``index`` is the choice's; ``ends`` says whether its final frame ends the stream
    (usage chunk, ``[DONE]``), false for one choice of a :class:`ChoicesStream`.
    ``logprobs``: whether the client asked for them (frames carry Ollama's)."""

    __slots__ = (
        "_close",
        "_ends",
        "_head",
        "_include_usage",
        "_logprobs",
        "_usage_null",
        "completion_tokens",
        "content_frames",
        "done",
        "error_message",
        "prompt_tokens",
    )

    def __init__(
        self, head: bytes, include_usage: bool, *, logprobs: bool = False, ends: bool = True
    ) -> None:
        self._head = head
        self._include_usage = include_usage
        self._logprobs = logprobs
        self._ends = ends
        # With include_usage OpenAI puts "usage": null on every other chunk; without it,
        # no usage key at all (and the SDK only reads it on the last chunk).
        self._usage_null = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._close = b',"logprobs":null,"finish_reason":null}]' + self._usage_null
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.content_frames = 0
        self.done = False
        self.error_message: str | None = None

    def _entries(self, logprobs: list[Any] | None) -> list[Any] | None:
        """A frame's token entries, when the client asked for them and there are any."""
        return logprobs if self._logprobs and logprobs else None

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
        if not self._ends:
            return finish_chunk
        end = _stream_end(
            self._head, self._include_usage, self.prompt_tokens, self.completion_tokens
        )
        return finish_chunk + end


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
    not decode, becomes :meth:`error`'s event. With ``logprobs`` a chunk carries its
    frame's token entries (:func:`~nz_proxy.translation.replies.chat_logprobs`); a frame
    of logprobs alone becomes a chunk with an empty delta. ``index`` and ``ends`` serve
    :class:`ChoicesStream`.

    Counters for accounting: ``prompt_tokens`` and ``completion_tokens`` (from the final
    frame), ``content_frames`` (frames that carried content, thinking, tool calls or
    logprobs: the fallback count when the final frame never comes), ``done`` and
    ``error_message``.
    """

    __slots__ = ("_id_base", "_open", "_role_sent", "_tool_calls")

    def __init__(
        self,
        *,
        model: str,
        completion_id: str,
        created: int,
        include_usage: bool,
        index: int = 0,
        logprobs: bool = False,
        ends: bool = True,
    ) -> None:
        head = _chunk_head(b"chat.completion.chunk", completion_id, created, model)
        super().__init__(head, include_usage, logprobs=logprobs, ends=ends)
        self._open = head + b'[{"index":' + str(index).encode() + b',"delta":'
        self._id_base = call_id_base(completion_id, index)
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
        logprobs = frame.get("logprobs")
        return self._step(
            content,
            thinking,
            calls,
            logprobs if isinstance(logprobs, list) else None,
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
            frame.logprobs,
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
        logprobs: list[Any] | None,
        done: bool,
        done_reason: object,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> bytes:
        out = b""
        entries = self._entries(logprobs)
        if content or thinking or calls or logprobs:
            self.content_frames += 1
        if content or thinking or calls or entries:
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
            close = self._close
            if entries is not None:
                shaped = _encode(chat_logprobs(entries))
                close = b',"logprobs":' + shaped + b',"finish_reason":null}]' + self._usage_null
            out = self._open + _encode(delta) + close
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
    (those tokens are generated and billed). With ``logprobs`` a chunk carries its
    frame's tokens (:func:`~nz_proxy.translation.replies.text_logprobs`), their
    ``text_offset`` counted from the start of this choice's text.
    """

    __slots__ = ("_index", "_offset", "_open")

    def __init__(
        self,
        *,
        model: str,
        completion_id: str,
        created: int,
        include_usage: bool,
        index: int = 0,
        logprobs: bool = False,
        ends: bool = True,
    ) -> None:
        head = _chunk_head(b"text_completion", completion_id, created, model)
        super().__init__(head, include_usage, logprobs=logprobs, ends=ends)
        self._open = head + b'[{"text":'
        self._index = b',"index":' + str(index).encode()
        self._close = self._index + b',"logprobs":null,"finish_reason":null}]' + self._usage_null
        self._offset = 0  # characters of text sent so far, for ``text_offset``

    def feed(self, frame: Mapping[str, Any]) -> bytes:
        """SSE bytes for one decoded native frame."""
        if self.finished:
            return b""
        error = frame.get("error")
        if error is not None:
            return self.error(error if isinstance(error, str) else _BAD_FRAME)
        text = frame.get("response")
        thinking = frame.get("thinking")
        logprobs = frame.get("logprobs")
        return self._step(
            text if isinstance(text, str) else "",
            isinstance(thinking, str) and bool(thinking),
            logprobs if isinstance(logprobs, list) else None,
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
            frame.logprobs,
            frame.done,
            frame.done_reason,
            token_count(frame.prompt_eval_count),
            token_count(frame.eval_count),
        )

    def _step(
        self,
        text: str,
        thinking: bool,
        logprobs: list[Any] | None,
        done: bool,
        done_reason: object,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> bytes:
        if text or thinking or logprobs:
            self.content_frames += 1
        entries = self._entries(logprobs)
        shaped = b"null"
        if entries is not None:
            values, self._offset = text_logprobs(entries, self._offset)
            shaped = _encode(values)
        elif text:
            self._offset += len(text)
        if not done:
            if not text and entries is None:
                return b""
            if entries is None:
                return self._open + _encode(text) + self._close
            return (
                self._open
                + _encode(text)
                + self._index
                + b',"logprobs":'
                + shaped
                + b',"finish_reason":null}]'
                + self._usage_null
            )
        self.done = True
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        return self._finish(
            self._open
            + _encode(text)
            + self._index
            + b',"logprobs":'
            + shaped
            + b',"finish_reason":"'
            + text_finish(done_reason).encode()
            + b'"}]'
            + self._usage_null
        )


class ChoicesStream:
    """Several choices' native streams as one SSE stream: ``n`` > 1, or a batch of
    prompts, each choice its own backend stream.

    Each choice is a :class:`ChatStream` or :class:`CompletionStream` made with its
    ``index`` and ``ends=False``; :meth:`feed_choice` translates one line of one choice,
    whose chunks carry its index (OpenAI clients gather choices by index). The usage
    chunk (the sum of every choice's counts) and ``[DONE]`` follow the last choice's
    finish. An error in any choice ends the whole stream with one error event, as a
    single stream ends; the caller stops the other backends. The counters are the sums
    of the choices'.
    """

    __slots__ = ("_choices", "_head", "_include_usage", "done", "error_message")

    def __init__(
        self, choices: Sequence[ChatStream | CompletionStream], *, include_usage: bool
    ) -> None:
        self._choices = list(choices)
        self._head = self._choices[0]._head
        self._include_usage = include_usage
        self.done = False
        self.error_message: str | None = None

    @property
    def finished(self) -> bool:
        return self.done or self.error_message is not None

    @property
    def prompt_tokens(self) -> int:
        return sum(choice.prompt_tokens for choice in self._choices)

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self._choices)

    @property
    def content_frames(self) -> int:
        return sum(choice.content_frames for choice in self._choices)

    def choice(self, index: int) -> ChatStream | CompletionStream:
        return self._choices[index]

    def feed_choice(self, index: int, line: bytes) -> bytes:
        """SSE bytes for one raw native line of choice ``index``."""
        if self.finished:
            return b""
        choice = self._choices[index]
        out = choice.feed_line(line)
        if choice.error_message is not None:
            self.error_message = choice.error_message
            return out  # the choice's error event ends the whole stream
        if choice.done and all(other.done for other in self._choices):
            self.done = True
            prompt, completion = self.prompt_tokens, self.completion_tokens
            out += _stream_end(self._head, self._include_usage, prompt, completion)
        return out

    def error(self, message: str) -> bytes:
        """One error event that ends the stream (``b""`` once it has finished)."""
        if self.finished:
            return b""
        self.error_message = message
        return _error_event(message)


class NativeStreamTap:
    """Watches a native NDJSON stream that is forwarded byte for byte (never re-encoded).

    Feed each complete line (or a whole non-streamed JSON body): the tap decodes only
    the fields it needs and tracks ``prompt_tokens``/``completion_tokens`` (the final
    frame's ``prompt_eval_count``/``eval_count``), ``content_frames`` (frames with
    content, thinking, tool calls or logprobs, for chat and generate alike), ``done`` and
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
            or frame.logprobs
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
