"""Endpoints that describe models rather than run them (SPEC §5): any valid key may
call them, and each shows only the key's effective set.

``/v1/models`` answers from discovery. ``/api/tags`` and ``/api/ps`` ask the backend
and filter its answer; ``/api/show`` first checks the model; ``/api/version`` is passed
through. They count towards the key's request rate, not its tokens.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Final

import msgspec

from nz_core.credentials import KeyPolicy
from nz_core.models import may_use, model_key
from nz_proxy.admission import Ask
from nz_proxy.body import ClientGone, parse_json_object, read_body
from nz_proxy.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotAllowed,
    Surface,
    UpstreamUnavailable,
)
from nz_proxy.exchange import Exchange, exchange_of
from nz_proxy.gateway import Gateway
from nz_proxy.inference import upstream_error
from nz_proxy.translation.replies import model_object, models_list
from nz_proxy.translation.responses import MEDIA_JSON, answer_unread_body, send_bytes, send_error
from nz_proxy.types import AsgiScope, Receive, Send
from nz_proxy.upstream import StreamBroken
from nz_proxy.wire import conform
from nz_proxy.wire.gokeys import canonical, shape_of
from nz_proxy.wire.ollama import OllamaShowRequest

__all__ = ["serve_listing"]

_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder().decode
# Go writes nanoseconds; Python's parser takes at most microseconds.
_FRACTION: Final = re.compile(r"(\.\d{6})\d+")


def _unix(stamp: object) -> int:
    if not isinstance(stamp, str):
        return 0
    try:
        return int(datetime.fromisoformat(_FRACTION.sub(r"\1", stamp)).timestamp())
    except ValueError:
        return 0


Handler = Callable[[Gateway, KeyPolicy, AsgiScope, Receive], Awaitable[bytes]]


async def serve_listing(
    gateway: Gateway,
    path: str,
    methods: Iterable[str],
    handler: Handler,
    scope: AsgiScope,
    receive: Receive,
    send: Send,
) -> None:
    exchange = exchange_of(scope)
    exchange.endpoint = path
    surface = exchange.surface
    head = scope["method"] == "HEAD"
    try:
        if scope["method"] not in methods:
            raise MethodNotAllowed(tuple(methods))
        policy = await gateway.authenticate(exchange, scope["headers"])
        ticket = await gateway.admission.admit(policy, Ask(rid=exchange.id.hex, inference=False))
    except GatewayError as error:
        await _refuse(send, exchange, error, surface)
        return
    try:
        body = await handler(gateway, policy, scope, receive)
    except GatewayError as error:
        await _refuse(send, exchange, error, surface, ticket.headers)
    except ClientGone:
        exchange.status = 499
        await answer_unread_body(send, surface)
    else:
        await send_bytes(send, 200, body, MEDIA_JSON, ticket.headers, head=head)
    finally:
        await gateway.admission.settle(ticket, 0, 0)


async def _refuse(
    send: Send,
    exchange: Exchange,
    error: GatewayError,
    surface: Surface,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    exchange.failed(error)
    await send_error(send, error, surface, headers)


async def _backend_json(gateway: Gateway, method: str, path: str, body: bytes | None = None) -> Any:
    reply = await gateway.upstream.send(method, path, body)
    if reply.status != 200:
        raise await upstream_error(reply)
    try:
        return _decode(await reply.read())
    except (StreamBroken, msgspec.DecodeError):
        raise UpstreamUnavailable from None


def _allowed_entries(gateway: Gateway, policy: KeyPolicy, entries: object) -> list[dict[str, Any]]:
    discovered = gateway.discovery.require().names
    if not isinstance(entries, list):
        return []
    kept = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model") or entry.get("name")
        if isinstance(name, str) and may_use(policy.models, discovered, model_key(name)):
            kept.append(entry)
    return kept


async def openai_models(
    gateway: Gateway, policy: KeyPolicy, scope: AsgiScope, receive: Receive
) -> bytes:
    entries = list(gateway.discovery.require().entries.values())
    objects = [
        model_object(str(entry.get("model") or entry.get("name")), _unix(entry.get("modified_at")))
        for entry in _allowed_entries(gateway, policy, entries)
    ]
    return _encode(models_list(objects))


async def openai_model(
    gateway: Gateway, policy: KeyPolicy, scope: AsgiScope, receive: Receive
) -> bytes:
    # The rest of the path, already percent-decoded by the server (`%2F` → `/`).
    requested = exchange_of(scope).path[len("/v1/models/") :]
    name = model_key(requested)
    exchange = exchange_of(scope)
    exchange.note_model(name or requested)
    catalogue = gateway.discovery.require()
    if name is None or not may_use(policy.models, catalogue.names, name):
        raise ModelNotAllowed
    exchange.model_allowed = True
    entry = catalogue.entries[name]
    return _encode(model_object(requested, _unix(entry.get("modified_at"))))


async def tags(gateway: Gateway, policy: KeyPolicy, scope: AsgiScope, receive: Receive) -> bytes:
    answer = await _backend_json(gateway, "GET", "/api/tags")
    models = answer.get("models") if isinstance(answer, dict) else None
    return _encode({"models": _allowed_entries(gateway, policy, models)})


async def running(gateway: Gateway, policy: KeyPolicy, scope: AsgiScope, receive: Receive) -> bytes:
    answer = await _backend_json(gateway, "GET", "/api/ps")
    models = answer.get("models") if isinstance(answer, dict) else None
    return _encode({"models": _allowed_entries(gateway, policy, models)})


async def show(gateway: Gateway, policy: KeyPolicy, scope: AsgiScope, receive: Receive) -> bytes:
    headers = dict(scope["headers"])
    body = parse_json_object(await read_body(receive, headers, gateway.settings.max_request_bytes))
    body = canonical(body, shape_of(OllamaShowRequest))
    conform(body, OllamaShowRequest)
    # Ollama's own rule: `name` when `model` is empty.
    requested = body.get("model") or body.get("name")
    if not isinstance(requested, str) or not requested.strip():
        raise InvalidRequest("model is required", param="model")
    name = model_key(requested)
    exchange = exchange_of(scope)
    exchange.note_model(name or requested)
    if not may_use(policy.models, gateway.discovery.require().names, name):
        raise ModelNotAllowed
    exchange.model_allowed = True
    return _encode(await _backend_json(gateway, "POST", "/api/show", _encode(body)))


async def version(gateway: Gateway, policy: KeyPolicy, scope: AsgiScope, receive: Receive) -> bytes:
    return _encode(await _backend_json(gateway, "GET", "/api/version"))


LISTINGS: Final[dict[str, tuple[tuple[str, ...], Handler]]] = {
    "/v1/models": (("GET",), openai_models),
    "/v1/models/{model}": (("GET",), openai_model),
    "/api/tags": (("GET", "HEAD"), tags),
    "/api/ps": (("GET",), running),
    "/api/show": (("POST",), show),
    "/api/version": (("GET", "HEAD"), version),
}
