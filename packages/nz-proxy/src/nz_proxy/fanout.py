"""Requests that fan out: ``n`` choices, or a batch of prompts on ``/v1/completions``.

Ollama answers one prompt with one choice, so a request for several is several backend
calls, made at once, one per choice, in OpenAI's order: prompt-major, choice ``index``
= the prompt's place * ``n`` + the choice's place. The request is still one request:
admitted once with a ``count`` (each call counts towards ``rpm``, holds a concurrency
slot and reserves its own completion cap, :mod:`nz_core.limiter`), answered once (one
body, or one stream whose chunks carry their choice's ``index``), settled once with the
tokens every call used, audited as one row.

It fails as a single request fails: a backend that refuses before anything was sent
fails it with its status, and the other calls are dropped; a stream that breaks
mid-way ends the whole stream with one error event, audited 502.

:func:`fan_out` builds the calls; :func:`forward_choices` is the lifecycle's step 4 for
them (:mod:`nz_proxy.inference` holds the rest).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from nz_proxy.admission import Ticket
from nz_proxy.disconnect import DisconnectWatch
from nz_proxy.errors import GatewayError, InvalidRequest, Surface, UpstreamUnavailable
from nz_proxy.exchange import Exchange
from nz_proxy.fleet.fleet import Sender
from nz_proxy.promptlog import Transcript
from nz_proxy.translation.answers import ChoicesAnswer
from nz_proxy.translation.framing import LineTooLong, NdjsonSplitter
from nz_proxy.translation.native import apply_completion_cap
from nz_proxy.translation.responses import send_bytes, send_error, start
from nz_proxy.types import Receive, Send
from nz_proxy.upstream import Reply, StreamBroken

__all__ = ["fan_out", "forward_choices"]

_encode: Final = msgspec.json.Encoder().encode
_INT64: Final = 1 << 64

# A native frame longer than this is not a frame (as for a single stream).
MAX_FRAME_BYTES: Final = 64 << 20
# Reads queued ahead of the client, per backend stream: a slow client slows them all.
_READ_AHEAD: Final = 4


def fan_out(
    native: dict[str, Any], n: int, limit: int, prompts: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The backend bodies of one request, in choice order: ``[native]`` for one.

    ``n`` is the choices asked for each prompt; ``prompts`` are a batch's (``native``
    carries the first; none: ``native``'s own). More than ``limit`` calls in all is a
    400 naming ``n``, or ``prompt`` when the batch makes it so many. Each call gets its
    own ``options``; with a ``seed``, choice ``j`` of a prompt samples with ``seed +
    j``: the same request gives the same choices again, yet its choices differ (one
    seed would make them all alike).
    """
    batch = len(prompts) or 1
    if n > limit:
        raise InvalidRequest(f"'n' may be at most {limit}.", param="n")
    if batch * n > limit:
        raise InvalidRequest(
            f"A request may ask for at most {limit} choices; {batch} prompts with n={n} "
            f"make {batch * n}. Send fewer prompts per request.",
            param="prompt",
        )
    if batch * n == 1:
        return [native]
    bodies = []
    batch_prompts: Sequence[str | None] = prompts or [None]
    for prompt in batch_prompts:
        for choice in range(n):
            body = dict(native)
            if prompt is not None:
                body["prompt"] = prompt
            options = dict(native.get("options") or {})
            seed = options.get("seed")
            if isinstance(seed, int) and not isinstance(seed, bool) and choice:
                # Wrapped into int64, as Ollama reads it.
                options["seed"] = (seed + choice + _INT64 // 2) % _INT64 - _INT64 // 2
            if options or "options" in native:
                body["options"] = options
            bodies.append(body)
    return bodies


@dataclass(slots=True)
class _Call:
    """One backend call of the fan-out."""

    body: dict[str, Any]
    reply: Reply | None = None
    answered: bool = False  # the backend said 200: tokens were spent
    finished: bool = False  # its answer was read to the end


async def forward_choices(
    upstream: Sender,
    path: str,
    surface: Surface,
    bodies: Sequence[dict[str, Any]],
    estimates: Sequence[int],
    answer: ChoicesAnswer,
    stream: bool,
    ticket: Ticket,
    exchange: Exchange,
    receive: Receive,
    send: Send,
    *,
    refuse: Callable[[Reply], Awaitable[GatewayError]],
    settle: Callable[[], Awaitable[None]],
    transcript: Transcript | None,
) -> None:
    """Everything after admission for a request of several calls; ``settle`` runs
    exactly once on every path, with the tokens of every call that was answered.
    ``refuse`` turns a backend answer other than 200 into the client's error."""
    calls = [_Call(body) for body in bodies]
    texts = [Transcript() for _ in calls] if transcript is not None else None
    watch = DisconnectWatch(receive)
    try:
        try:
            if ticket.cap is not None:
                for call in calls:  # each call is capped as a request of its own
                    apply_completion_cap(call.body, ticket.cap)
            replies = await _open(upstream, path, calls, refuse)
            if stream:
                await _stream(calls, replies, answer, ticket, exchange, watch, send, texts)
            else:
                for index, (call, reply) in enumerate(zip(calls, replies, strict=True)):
                    body = await reply.read()
                    call.finished = True
                    if texts is not None:
                        texts[index].feed(body)
                    answer.read_choice(index, body)
                watch.disarm()
                exchange.first_byte()
                await send_bytes(send, 200, answer.whole_body(), answer.whole_media, ticket.headers)
        except GatewayError as error:
            exchange.failed(error)
            watch.disarm()
            await send_error(send, error, surface, ticket.headers)
        except StreamBroken:
            broken = UpstreamUnavailable()
            exchange.error = broken.code
            watch.disarm()
            await send_error(send, broken, surface, ticket.headers)
    except asyncio.CancelledError:
        if not watch.absorb():
            raise  # the server is stopping, not the client leaving
        exchange.status = 499
    finally:
        watch.close()
        for call in calls:
            if call.reply is not None and not call.finished:
                call.reply.abort()  # the backend stops generating for nobody
        answered = [call.answered for call in calls]
        exchange.tokens_in, exchange.tokens_out = answer.choices_usage(estimates, answered)
        if transcript is not None and texts is not None:
            _transcribe(transcript, texts)
        # Settlement must not be lost to a cancellation arriving meanwhile.
        await asyncio.shield(settle())


async def _open(
    upstream: Sender,
    path: str,
    calls: list[_Call],
    refuse: Callable[[Reply], Awaitable[GatewayError]],
) -> list[Reply]:
    """Send every call at once and wait for every backend to answer 200; the first
    that does not fails the request, and the calls still waiting are dropped."""

    async def one(call: _Call) -> Reply:
        reply = call.reply = await upstream.send("POST", path, _encode(call.body))
        if reply.status != 200:
            call.finished = True  # its error body is read whole: nothing to drop
            raise await refuse(reply)
        call.answered = True
        return reply

    tasks = [asyncio.ensure_future(one(call)) for call in calls]
    try:
        for next_done in asyncio.as_completed(tasks):
            await next_done
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _stream(
    calls: list[_Call],
    replies: list[Reply],
    answer: ChoicesAnswer,
    ticket: Ticket,
    exchange: Exchange,
    watch: DisconnectWatch,
    send: Send,
    texts: list[Transcript] | None,
) -> None:
    """Every backend stream into one client stream, frame by frame as they arrive."""
    await start(send, answer.stream_media, ticket.headers)
    lines: asyncio.Queue[tuple[int, list[bytes] | str | None]] = asyncio.Queue(
        _READ_AHEAD * len(calls)
    )
    readers = [asyncio.ensure_future(_read(i, reply, lines)) for i, reply in enumerate(replies)]
    failure: str | None = None
    try:
        running = len(calls)
        while running and not answer.finished:
            index, item = await lines.get()
            if isinstance(item, str):
                failure = item
                break
            if item is None:
                running -= 1
                calls[index].finished = answer.choice_finished(index)
                if not calls[index].finished:
                    failure = "The model backend ended the stream early."
                    break
                continue
            if texts is not None:
                for line in item:
                    texts[index].feed(line)
            out = b"".join(answer.choice_line(index, line) for line in item)
            if out:
                exchange.first_byte()
                await send({"type": "http.response.body", "body": out, "more_body": True})
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    if failure is not None:
        await send({"type": "http.response.body", "body": answer.error(failure), "more_body": True})
    elif not answer.failed:
        for call, reply in zip(calls, replies, strict=True):
            reply.release()  # every final frame was read: the connection can be reused
            call.finished = True
    if failure is not None or answer.failed:
        # The status line said 200; the audit row and the log say how it ended.
        exchange.error = UpstreamUnavailable.code
        exchange.status = UpstreamUnavailable.status
    watch.disarm()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _read(
    index: int, reply: Reply, lines: asyncio.Queue[tuple[int, list[bytes] | str | None]]
) -> None:
    """One backend stream's lines onto the queue; ``None`` at its end, or the failure."""
    splitter = NdjsonSplitter(max_line=MAX_FRAME_BYTES)
    try:
        async for chunk in reply.chunks():
            found = splitter.feed(chunk)
            if found:
                await lines.put((index, found))
        tail = splitter.flush()
        if tail:
            await lines.put((index, [tail]))
    except StreamBroken:
        await lines.put((index, "The model backend failed during the stream."))
        return
    except LineTooLong:  # a backend sending a frame without end must not grow us
        await lines.put((index, "The model backend sent a frame too large to pass on."))
        return
    await lines.put((index, None))


def _transcribe(transcript: Transcript, texts: list[Transcript]) -> None:
    """Every choice's text into the request's transcript, in choice order."""
    for index, text in enumerate(texts):
        separator = f"\n\n[choice {index}]\n" if index else "[choice 0]\n"
        transcript.feed(_encode({"response": separator + text.text}))
