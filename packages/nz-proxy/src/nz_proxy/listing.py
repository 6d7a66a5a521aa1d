"""Endpoints that describe models rather than run them (SPEC §5): any valid key may
call them, and each shows only the key's effective set.

``/v1/models`` answers from discovery. ``/api/tags`` and ``/api/ps`` ask the backend
and filter its answer; ``/api/show`` first checks the model; ``/api/version`` is passed
through. They count against the key's listing allowance
(:mod:`nz_proxy.admission.listing`), never its ``rpm``, ``tpm`` or ``concurrent``: a
front-end that lists models on every page load leaves the key's messages their
allowance.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

import msgspec

from nz_core.credentials import KeyPolicy
from nz_core.models import may_use, model_key
from nz_proxy.admission import Ask
from nz_proxy.body import ClientGone, header_fields, parse_json_object, read_body
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
from nz_proxy.upstream import Reply, StreamBroken
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
        await gateway.listing.admit(policy.prefix, exchange.id.hex)
        # Without its rpm, the key's admission counts nothing and refuses nothing for a
        # listing: it only reads the token window and budgets, for the headers (§6.5).
        uncounted = replace(policy, limits=replace(policy.limits, rpm=None))
        ticket = await gateway.admission.admit(uncounted, Ask(rid=exchange.id.hex, inference=False))
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


async def _json(reply: Reply) -> Any:
    if reply.status != 200:
        raise await upstream_error(reply)
    try:
        return _decode(await reply.read())
    except (StreamBroken, msgspec.DecodeError):
        raise UpstreamUnavailable from None


async def _backend_json(
    gateway: Gateway, path: str, body: bytes | None = None, model: str | None = None
) -> Any:
    return await _json(await gateway.fleet.ask(path, body, model))


async def _union(gateway: Gateway, path: str) -> list[Any]:
    """The ``models`` of every node that answered, each model once (nothing says which
    node has what: SPEC §4.10)."""
    seen: dict[str, Any] = {}
    for reply in await gateway.fleet.ask_each(path):
        answer = await _json(reply)
        models = answer.get("models") if isinstance(answer, dict) else None
        for entry in models if isinstance(models, list) else []:
            name = entry.get("model") or entry.get("name") if isinstance(entry, dict) else None
            if isinstance(name, str):
                seen.setdefault(name, entry)
    return list(seen.values())


def _allowed_entries(gateway: Gateway, policy: KeyPolicy, entries: object) -> list[dict[str, Any]]:
    discovered = gateway.fleet.require().names
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
    entries = list(gateway.fleet.require().entries.values())
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
    catalogue = gateway.fleet.require()
    if name is None or not may_use(policy.models, catalogue.names, name):
        raise ModelNotAllowed
    exchange.model_allowed = True
    entry = catalogue.entries[name]
    return _encode(model_object(requested, _unix(entry.get("modified_at"))))


async def tags(gateway: Gateway, policy: KeyPolicy, scope: AsgiScope, receive: Receive) -> bytes:
    models = await _union(gateway, "/api/tags")
    return _encode({"models": _allowed_entries(gateway, policy, models)})


async def running(gateway: Gateway, policy: KeyPolicy, scope: AsgiScope, receive: Receive) -> bytes:
    models = await _union(gateway, "/api/ps")
    return _encode({"models": _allowed_entries(gateway, policy, models)})


async def show(gateway: Gateway, policy: KeyPolicy, scope: AsgiScope, receive: Receive) -> bytes:
    headers = header_fields(scope["headers"])
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
    if not may_use(policy.models, gateway.fleet.require().names, name):
        raise ModelNotAllowed
    exchange.model_allowed = True
    return _encode(await _backend_json(gateway, "/api/show", _encode(body), name))


async def version(gateway: Gateway, policy: KeyPolicy, scope: AsgiScope, receive: Receive) -> bytes:
    return _encode(await _backend_json(gateway, "/api/version"))


LISTINGS: Final[dict[str, tuple[tuple[str, ...], Handler]]] = {
    "/v1/models": (("GET",), openai_models),
    "/v1/models/{model}": (("GET",), openai_model),
    "/api/tags": (("GET", "HEAD"), tags),
    "/api/ps": (("GET",), running),
    "/api/show": (("POST",), show),
    "/api/version": (("GET", "HEAD"), version),
}
