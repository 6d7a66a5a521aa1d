"""The inference request path: SPEC §4's lifecycle, top to bottom.

1. authenticate and check the scope;  2. read and translate the body, check the model
policy;  3. admit (:mod:`nz_proxy.admission`);  4. forward to the backend and answer,
streamed or whole;  5. settle, exactly once, whatever happened in between (client
disconnect, backend failure, cancellation).

:data:`ENDPOINTS` describes every inference endpoint of SPEC §5: which scope it needs,
where it goes upstream and how its answer is shaped (:mod:`nz_proxy.translation.answers`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import msgspec
import structlog

from nz_core.budgets import estimate_prompt_tokens
from nz_core.credentials import KeyPolicy
from nz_core.models import may_use, model_key
from nz_core.scopes import Scope
from nz_proxy.admission import Ask, Ticket
from nz_proxy.admission.stores import Settled
from nz_proxy.audit import PromptRecord, encode_row, row_of
from nz_proxy.body import ClientGone, decode_object, header_fields, read_body
from nz_proxy.disconnect import DisconnectWatch
from nz_proxy.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotAllowed,
    ScopeMissing,
    Surface,
    UpstreamRejected,
    UpstreamUnavailable,
)
from nz_proxy.exchange import Exchange, exchange_of
from nz_proxy.fanout import fan_out, forward_choices
from nz_proxy.fleet.fleet import Calls
from nz_proxy.fleet.policy import apply_keep_alive, apply_num_ctx, requested_num_ctx
from nz_proxy.gateway import Gateway
from nz_proxy.promptlog import Transcript
from nz_proxy.translation.answers import (
    Answer,
    ChatAnswer,
    ChoicesAnswer,
    CompletionAnswer,
    EmbeddingsAnswer,
    NativeAnswer,
    StreamingAnswer,
)
from nz_proxy.translation.framing import LineTooLong, NdjsonSplitter
from nz_proxy.translation.native import (
    apply_completion_cap,
    check_keep_alive,
    prompt_text_bytes,
    requested_completion_cap,
)
from nz_proxy.translation.requests import (
    batch_prompts,
    chat_request,
    choice_count,
    completion_request,
    embeddings_request,
    include_usage,
)
from nz_proxy.translation.responses import answer_unread_body, send_bytes, send_error, start
from nz_proxy.types import AsgiScope, Receive, Send
from nz_proxy.upstream import Reply, StreamBroken, client_safe, error_message
from nz_proxy.wire import conform, read
from nz_proxy.wire.gokeys import canonical, shape_of
from nz_proxy.wire.ollama import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
)
from nz_proxy.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingsRequest

__all__ = ["ENDPOINTS", "Inference", "Prepared", "serve_inference", "upstream_error"]

log = structlog.get_logger("nz_proxy.inference")

_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder().decode

# A native frame longer than this is not a frame (a final `context` array is ~100 KB).
MAX_FRAME_BYTES: Final = 64 << 20


@dataclass(slots=True)
class Prepared:
    """A request translated for the backend, and the answer that will shape its reply."""

    native: dict[str, Any]
    model: str
    stream: bool
    answer: Answer
    # The same answer when the client asked for a stream, else None.
    streamer: StreamingAnswer | None = None
    # The backend calls of a request for several choices (n, a batch of prompts), and
    # the same answer, which holds them all (nz_proxy.fanout); else none.
    calls: list[dict[str, Any]] = field(default_factory=list)
    choices: ChoicesAnswer | None = None

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """What goes to the backend: one body per call."""
        return self.calls or [self.native]


@dataclass(frozen=True, slots=True)
class Inference:
    path: str
    surface: Surface
    scope: Scope
    upstream: str
    # The body, and the most choices a request may ask for (MAX_CHOICES).
    prepare: Callable[[dict[str, Any], int], Prepared]

    @property
    def generates(self) -> bool:
        """Embeddings produce no completion: nothing to cap or reserve beyond the prompt."""
        return self.scope is Scope.CHAT


# -- how each endpoint's request is read ---------------------------------------


def _openai_chat(body: dict[str, Any], max_choices: int) -> Prepared:
    body = canonical(body, shape_of(ChatCompletionRequest))
    native = chat_request(body)
    calls = fan_out(native, choice_count(body), max_choices)
    answer = ChatAnswer(
        native["model"], include_usage(body), choices=len(calls), logprobs=_logprobs(native)
    )
    return _generation(native, answer, calls)


def _openai_completion(body: dict[str, Any], max_choices: int) -> Prepared:
    body = canonical(body, shape_of(CompletionRequest))
    native = completion_request(body)
    calls = fan_out(native, choice_count(body), max_choices, batch_prompts(body))
    answer = CompletionAnswer(
        native["model"], include_usage(body), choices=len(calls), logprobs=_logprobs(native)
    )
    return _generation(native, answer, calls)


def _logprobs(native: dict[str, Any]) -> bool:
    return native.get("logprobs") is True


def _generation(
    native: dict[str, Any], answer: ChatAnswer | CompletionAnswer, calls: list[dict[str, Any]]
) -> Prepared:
    """An OpenAI generation, of one call or several."""
    streamer = answer if native["stream"] else None
    if len(calls) == 1:
        return Prepared(native, native["model"], native["stream"], answer, streamer)
    return Prepared(native, native["model"], native["stream"], answer, streamer, calls, answer)


def _openai_embeddings(body: dict[str, Any], _max_choices: int) -> Prepared:
    native, encoding = embeddings_request(canonical(body, shape_of(EmbeddingsRequest)))
    model = native["model"]
    return Prepared(native, model, False, EmbeddingsAnswer(model, encoding))


def _native_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model is required", param="model")
    return model


def _native_generation(
    schema: type[msgspec.Struct], body: dict[str, Any], _max_choices: int
) -> Prepared:
    body = canonical(body, shape_of(schema))
    model = _native_model(body)
    stream = body.get("stream")
    if stream is None:
        stream = True  # Ollama streams unless told not to
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be true or false", param="stream")
    conform(body, schema)
    answer = NativeAnswer()
    return Prepared(body, model, stream, answer, answer if stream else None)


def _native_embed(body: dict[str, Any], _max_choices: int) -> Prepared:
    body = read(body, OllamaEmbedRequest)
    return Prepared(body, _native_model(body), False, NativeAnswer())


def _native_legacy_embeddings(body: dict[str, Any], _max_choices: int) -> Prepared:
    body = read(body, OllamaEmbeddingsRequest)
    # The legacy answer has no prompt_eval_count: the prompt is charged at its estimate.
    return Prepared(body, _native_model(body), False, NativeAnswer(counts_prompt=False))


ENDPOINTS: Final = {
    endpoint.path: endpoint
    for endpoint in (
        Inference("/v1/chat/completions", Surface.OPENAI, Scope.CHAT, "/api/chat", _openai_chat),
        Inference(
            "/v1/completions", Surface.OPENAI, Scope.CHAT, "/api/generate", _openai_completion
        ),
        Inference(
            "/v1/embeddings", Surface.OPENAI, Scope.EMBEDDINGS, "/api/embed", _openai_embeddings
        ),
        Inference(
            "/api/chat",
            Surface.OLLAMA,
            Scope.CHAT,
            "/api/chat",
            partial(_native_generation, OllamaChatRequest),
        ),
        Inference(
            "/api/generate",
            Surface.OLLAMA,
            Scope.CHAT,
            "/api/generate",
            partial(_native_generation, OllamaGenerateRequest),
        ),
        Inference("/api/embed", Surface.OLLAMA, Scope.EMBEDDINGS, "/api/embed", _native_embed),
        Inference(
            "/api/embeddings",
            Surface.OLLAMA,
            Scope.EMBEDDINGS,
            "/api/embeddings",
            _native_legacy_embeddings,
        ),
    )
}


# -- the lifecycle --------------------------------------------------------------


async def serve_inference(
    gateway: Gateway, endpoint: Inference, scope: AsgiScope, receive: Receive, send: Send
) -> None:
    exchange = exchange_of(scope)
    exchange.endpoint = endpoint.path
    headers = header_fields(scope["headers"])
    try:
        if scope["method"] != "POST":
            raise MethodNotAllowed(("POST",))
        policy = await gateway.authenticate(exchange, scope["headers"])
        if endpoint.scope not in policy.scopes:
            raise ScopeMissing(endpoint.scope.value)
        raw = await read_body(receive, headers, gateway.settings.max_request_bytes)
        max_choices = gateway.settings.max_choices
        prepared = await decode_object(raw, lambda body: endpoint.prepare(body, max_choices))
        check_keep_alive(prepared.native)
        model = model_key(prepared.model)
        exchange.note_model(model or prepared.model)
        exchange.stream = prepared.stream
        if model is None or not may_use(policy.models, gateway.fleet.require().names, model):
            raise ModelNotAllowed
        exchange.model_allowed = True
        calls = Calls(
            gateway.fleet,
            model,
            await _residency(gateway, policy, model, prepared),
            exchange.id.hex,
        )
        # Each backend call is estimated on its own (the prompts of a batch differ).
        estimates = [
            estimate_prompt_tokens(
                *prompt_text_bytes(body), image_tokens=gateway.settings.budget_image_tokens
            )
            for body in prepared.bodies
        ]
        estimate = sum(estimates)
        ask = Ask(
            rid=exchange.id.hex,
            inference=True,
            prompt_estimate=estimate,
            requested_cap=requested_completion_cap(prepared.native) if endpoint.generates else None,
            generates=endpoint.generates,
            count=len(estimates),
        )
        journal = _admission_row(gateway, exchange, estimate)
        ticket = await gateway.admission.admit(policy, ask, journal)
    except GatewayError as error:
        exchange.failed(error)
        await send_error(send, error, endpoint.surface)
        return
    except ClientGone:
        exchange.status = 499
        await answer_unread_body(send, endpoint.surface)
        return
    transcript = Transcript() if policy.prompt_log else None
    with gateway.in_flight():
        try:
            if prepared.choices is not None:
                await forward_choices(
                    calls,
                    endpoint.upstream,
                    endpoint.surface,
                    prepared.calls,
                    estimates,
                    prepared.choices,
                    prepared.stream,
                    ticket,
                    exchange,
                    receive,
                    send,
                    refuse=upstream_error,
                    settle=partial(_settle, gateway, ticket, exchange),
                    transcript=transcript,
                )
            else:
                await _forward(
                    gateway, endpoint, prepared, calls, ticket, exchange, receive, send, transcript
                )
        finally:
            exchange.backend = calls.backend
            calls.finish()  # the node's slot, on every exit
    if transcript is not None:
        _log_prompt(gateway, exchange, raw, transcript)


def _admission_row(gateway: Gateway, exchange: Exchange, estimate: int) -> bytes:
    """The audit row a journaling store keeps with the reservation: should this
    process die before settling, the request is audited as failed, at its reservation
    (the reaper sets the completion part)."""
    if not gateway.admission.journals:
        return b""
    exchange.tokens_in = estimate
    row = row_of(exchange, status=500)
    exchange.tokens_in = 0
    return encode_row(row)


def _log_prompt(gateway: Gateway, exchange: Exchange, raw: bytes, transcript: Transcript) -> None:
    policy = exchange.policy
    if policy is None:
        return
    retention = policy.prompt_log_retention_days
    gateway.audit.record_prompt(
        PromptRecord(
            id=exchange.id.bytes,
            request_id=exchange.request_id,
            key_id=policy.key_id,
            ts_us=int(exchange.ts.timestamp() * 1_000_000),
            request_body=raw.decode("utf-8", "replace"),
            response_text=transcript.text,
            retention_days=retention or gateway.settings.prompt_log_default_retention_days,
        )
    )


async def _forward(
    gateway: Gateway,
    endpoint: Inference,
    prepared: Prepared,
    calls: Calls,
    ticket: Ticket,
    exchange: Exchange,
    receive: Receive,
    send: Send,
    transcript: Transcript | None,
) -> None:
    """Everything after admission; the ticket is settled exactly once on every path."""
    answer = prepared.answer
    reply: Reply | None = None
    answered = False  # the backend said 200, so tokens were spent
    watch = DisconnectWatch(receive)
    try:
        if ticket.cap is not None:
            apply_completion_cap(prepared.native, ticket.cap)
        try:
            reply = await calls.send("POST", endpoint.upstream, _encode(prepared.native))
            exchange.backend = calls.backend
            if reply.status != 200:
                raise await upstream_error(reply)
            answered = True
            if prepared.streamer is not None:
                await _stream(reply, prepared.streamer, ticket, exchange, watch, send, transcript)
            else:
                native = await reply.read()
                if transcript is not None:
                    transcript.feed(native)
                body = answer.whole(native)
                watch.disarm()
                exchange.first_byte()
                await send_bytes(send, 200, body, answer.whole_media, ticket.headers)
        except GatewayError as error:
            exchange.failed(error)
            watch.disarm()
            await send_error(send, error, endpoint.surface, ticket.headers)
        except StreamBroken:
            broken = UpstreamUnavailable()
            exchange.error = broken.code
            watch.disarm()
            await send_error(send, broken, endpoint.surface, ticket.headers)
    except asyncio.CancelledError:
        if not watch.absorb():
            raise  # the server is stopping, not the client leaving
        exchange.status = 499
    finally:
        watch.close()
        streamer = prepared.streamer
        if reply is not None and not (answered and (streamer is None or streamer.finished)):
            reply.abort()  # the backend stops generating for a client that left
        tokens_in, tokens_out = answer.usage(ticket.ask.prompt_estimate) if answered else (0, 0)
        exchange.tokens_in, exchange.tokens_out = tokens_in, tokens_out
        # Settlement must not be lost to a cancellation arriving meanwhile.
        await asyncio.shield(_settle(gateway, ticket, exchange))


async def _residency(
    gateway: Gateway, policy: KeyPolicy, model: str, prepared: Prepared
) -> int | None:
    """The residency policy (SPEC §4.12) on every backend call of the request; returns
    the context size they need loaded."""
    settings = gateway.settings
    bounds = (settings.keep_alive_min_s, settings.keep_alive_max_s)
    pinned = gateway.topology.topology.pinned_num_ctx(model)
    needs: int | None = None
    for body in prepared.bodies:
        apply_keep_alive(body, policy.scopes, bounds)
        length = None
        if pinned is None and requested_num_ctx(body) is not None:
            length = await gateway.fleet.context_length(model)
        needs = apply_num_ctx(body, pinned, length)
    return needs


async def _settle(gateway: Gateway, ticket: Ticket, exchange: Exchange) -> None:
    admission = gateway.admission
    journal = b""
    if admission.journals:
        journal = encode_row(row_of(exchange, status=exchange.status or 499))
        exchange.journaled = True
    outcome = await admission.settle(ticket, exchange.tokens_in, exchange.tokens_out, journal)
    if outcome is Settled.PENDING or (outcome is Settled.UNKNOWN and journal):
        exchange.row_owed = True  # the admission records this row
    elif outcome is Settled.ABANDONED:
        # Its lease ran out and another process settled it at its reservation; the
        # audit row must say the same, or the ledger and the counters would disagree.
        exchange.tokens_in = ticket.ask.prompt_estimate
        exchange.tokens_out = max(0, ticket.reserved - ticket.ask.prompt_estimate)


async def _stream(
    reply: Reply,
    answer: StreamingAnswer,
    ticket: Ticket,
    exchange: Exchange,
    watch: DisconnectWatch,
    send: Send,
    transcript: Transcript | None,
) -> None:
    await start(send, answer.stream_media, ticket.headers)
    failure: str | None = None
    try:
        await _pass_frames(reply, answer, exchange, send, transcript)
        if not answer.finished:
            failure = "The model backend ended the stream early."
    except StreamBroken:
        failure = "The model backend failed during the stream."
    except LineTooLong:  # a backend sending a frame without end must not grow us
        failure = "The model backend sent a frame too large to pass on."
    if failure is not None:
        reply.abort()  # the connection is broken or holds a frame we will not read
        await send({"type": "http.response.body", "body": answer.error(failure), "more_body": True})
    else:
        reply.release()
    if failure is not None or answer.failed:
        # The status line said 200; the audit row and the log say how it ended.
        exchange.error = UpstreamUnavailable.code
        exchange.status = UpstreamUnavailable.status
    watch.disarm()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _pass_frames(
    reply: Reply,
    answer: StreamingAnswer,
    exchange: Exchange,
    send: Send,
    transcript: Transcript | None,
) -> None:
    """Each backend frame to the client as it arrives, until the answer is finished."""
    splitter = NdjsonSplitter(max_line=MAX_FRAME_BYTES)
    async for chunk in reply.chunks():
        lines = splitter.feed(chunk)
        if transcript is not None:
            for line in lines:
                transcript.feed(line)
        out = b"".join(answer.line(line) for line in lines)
        if out:
            exchange.first_byte()
            await send({"type": "http.response.body", "body": out, "more_body": True})
        if answer.finished:
            return
    tail = splitter.flush()
    out = answer.line(tail) if tail else b""
    if out:
        await send({"type": "http.response.body", "body": out, "more_body": True})


async def upstream_error(reply: Reply) -> GatewayError:
    """The refusal to pass on for a backend answer other than 200."""
    status = reply.status
    try:
        body = await reply.read()
    except StreamBroken:
        return UpstreamUnavailable()
    message = error_message(body)
    if status >= 500:
        log.warning("upstream_error", status=status, body=body[:300].decode("utf-8", "replace"))
        # Ollama's own message helps the client (the model does not fit in memory, a
        # load failed); it is passed on made safe. A queue that is full frees soon.
        return UpstreamUnavailable(
            detail=client_safe(message) if message else None,
            retry_after_ms=1000 if status == 503 else None,
        )
    if status == 404:
        # The model vanished since discovery: the same answer as any unknown model.
        return ModelNotAllowed()
    text = client_safe(message) if message else f"The model backend refused the request ({status})."
    return UpstreamRejected(status, text)
