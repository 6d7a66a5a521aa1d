"""Poison strings in every field that reaches the audit never stop it (SPEC §3, §4.8).

A real gateway (Granian, ``TRUSTED_PROXIES`` set so the client address comes from
``X-Forwarded-For``) in each storage mode gets NUL, lone surrogates, control
characters and 10 kB strings in the path (percent-encoded, with and without a key), the
model (JSON bodies on ``/api`` and ``/v1``), ``X-Request-ID``, ``X-Forwarded-For``,
``Authorization`` and body fields, in concurrent bursts so that poison rows share
batches with clean ones. ``/readyz`` must stay ready, later requests must be audited
while it runs, and after a graceful stop (SIGTERM, the buffer drained) every request
the application answered has exactly one audit row, and the ledger equals the audit
tokens.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import sqlalchemy as sa

from nz_core import admin
from nz_core.database import connect
from nz_core.schema import api_keys, audit_log, budget_usage
from tests.e2e.conftest import Deployment, RigFactory
from tests.e2e.test_hostile import RawResponse, port_of, raw_exchange, request_head
from tests.processes import stop_gateway

Header = tuple[bytes, bytes]
# What RFC 9110 forbids in a field value (HTAB aside): such requests never reach the
# application, so they have no audit row.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

LONG = "x" * 10_000
# Model names and body strings, as JSON escapes the gateway's parser sees (json.dumps
# writes control characters and lone surrogates as \uXXXX).
POISON_STRINGS = [
    "\x00",
    "llama3.2\x00",
    "\x1b[31mred\x1b[0m",
    "a\x7fb\x85c\u2028d",
    "\ud800",
    "x\udc80y",
    "nz_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",  # key-shaped
    LONG,
    "llama3.2" + "\x00" * 5_000,
]
# Percent-encoded paths: NUL, invalid UTF-8 (a lone surrogate's bytes), C0 and C1
# controls, CR LF, DEL, 10 kB, on unknown routes, under /api and /v1, and a model path.
POISON_PATHS = [
    "/x%00y",
    "/%00",
    "/x%ED%A0%80y",
    "/x%FF%FEy",
    "/x%C2%85y",
    "/x%1B%5B31my",
    "/x%0D%0ASet-Cookie:%20a=1",
    "/x%7Fy",
    "/" + "a" * 10_000,
    "/v1/%00",
    "/v1/models/llama3.2%00",
    "/v1/models/%ED%A0%80",
    "/v1/models/" + "m" * 10_000,
    "/api/%00x",
    "/api/blobs/sha256:%00",
    "/api/" + "%00" * 200,
]
REQUEST_IDS: list[bytes] = [
    b"\x85abc",
    b"\xff\xfe\xfd",
    b"a" * 10_000,
    b"id with spaces",
    b"\x00nul",  # refused by the HTTP parser itself
    b"del\x7f",
]
FORWARDED: list[bytes] = [
    b"203.0.113.7",
    b"\x85",
    b"203.0.113.7\x85",
    b"a" * 10_000,
    b"198.51.100.1, \xff\xfe",
    b"999.1.1.1",
    b"203.0.113.7%00",
    b"fe80::1%\x85\xff",  # an IPv6 scope id may be any text
    b"fe80::1%" + b"s" * 10_000,
    b"\x00",  # refused by the HTTP parser itself
]
AUTHORIZATION: list[bytes] = [
    b"Bearer nz_\x85\x86\x87",
    b"Bearer " + b"z" * 10_000,
    b"Basic \xff\xfe",
    b"Bearer nz_\x00abc",  # refused by the HTTP parser itself
    b"\x1b[31m",
]

ENDPOINT_BODIES = {
    "/api/chat": lambda m: {"model": m, "messages": [{"role": "user", "content": "hi"}]},
    "/api/generate": lambda m: {"model": m, "prompt": "hi", "stream": False},
    "/api/show": lambda m: {"model": m},
    "/api/embed": lambda m: {"model": m, "input": "hi"},
    "/api/embeddings": lambda m: {"model": m, "prompt": "hi"},
    "/v1/chat/completions": lambda m: {"model": m, "messages": [{"role": "user", "content": "x"}]},
    "/v1/completions": lambda m: {"model": m, "prompt": "hi"},
    "/v1/embeddings": lambda m: {"model": m, "input": "hi"},
}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    headers: tuple[Header, ...] = ()
    body: bytes = b""


@dataclass
class Outcome:
    """What the fuzz sent, by whether the application answered it."""

    request_ids: list[str] = field(default_factory=list)
    by_parser: int = 0  # refused by Granian's HTTP parser: no application, no row

    def add(self, response: RawResponse, case: Case) -> None:
        ids = response.values(b"x-request-id")
        if not ids:
            # Only what HTTP itself forbids: a control character in a header value.
            assert response.status == 400, (case.path[:80], response.raw[:300])
            assert any(_CONTROL.search(value) for _, value in case.headers), case
            self.by_parser += 1
            return
        assert len(ids) == 1
        self.request_ids.append(ids[0].decode("ascii"))

    @property
    def answered(self) -> int:
        return len(self.request_ids)


def encode(body: object) -> bytes:
    # ensure_ascii: control characters and lone surrogates travel as \uXXXX escapes.
    return json.dumps(body, ensure_ascii=True).encode()


def cases(key: str) -> Iterator[Case]:
    bearer = (b"Authorization", f"Bearer {key}".encode())
    for path in POISON_PATHS:
        yield Case("GET", path)
        yield Case("GET", path, (bearer,))
        yield Case("POST", path, (bearer,), b"{}")
    yield Case("GET", f"/{key}/x%00")  # a key pasted into a path, with poison
    for endpoint, build in ENDPOINT_BODIES.items():
        for model in POISON_STRINGS:
            body = encode(build(model))
            yield Case("POST", endpoint, (bearer,), body)
            yield Case("POST", endpoint, (), body)
        # A valid model, poison everywhere else in the body: admitted and forwarded.
        fields = build("llama3.2")
        fields |= {"user": "\x00\ud800", "options": {"stop": ["\x00"]}, "keep_alive": "5m"}
        yield Case("POST", endpoint, (bearer,), encode(fields))
    chat = encode(ENDPOINT_BODIES["/api/chat"]("llama3.2") | {"stream": False})
    for request_id in REQUEST_IDS:
        yield Case("POST", "/api/chat", (bearer, (b"X-Request-ID", request_id)), chat)
        yield Case("GET", "/x%00", ((b"X-Request-ID", request_id),))
    for forwarded in FORWARDED:
        yield Case("POST", "/api/chat", (bearer, (b"X-Forwarded-For", forwarded)), chat)
        yield Case("GET", "/v1/models", ((b"X-Forwarded-For", forwarded),))
    for authorization in AUTHORIZATION:
        yield Case("POST", "/v1/chat/completions", ((b"Authorization", authorization),), chat)
        yield Case("GET", "/x%00y", ((b"Authorization", authorization),))


def send(port: int, case: Case) -> tuple[Case, RawResponse]:
    headers: list[tuple[str, str] | tuple[bytes, bytes]] = [*case.headers]
    headers += [("Content-Type", "application/json"), ("Content-Length", str(len(case.body)))]
    return case, raw_exchange(port, request_head(case.method, case.path, headers) + case.body)


def burst(port: int, batch: list[Case], outcome: Outcome) -> None:
    """All at once, so poison rows share the writer's batches with clean ones."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        for case, response in pool.map(lambda c: send(port, c), batch):
            outcome.add(response, case)


@contextmanager
def probing(url: str) -> Iterator[list[tuple[int, dict[str, str]]]]:
    """/readyz every 0.2 s while the block runs: (status, checks) of each probe."""
    seen: list[tuple[int, dict[str, str]]] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            answer = httpx.get(url + "/readyz", timeout=10)
            seen.append((answer.status_code, answer.json()["checks"]))
            stop.wait(0.2)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(15)


async def audited(deployment: Deployment, request_ids: list[str]) -> dict[str, int]:
    """Audit rows per request id."""
    counts: dict[str, int] = {}
    async with connect(deployment.engine) as conn:
        for start in range(0, len(request_ids), 500):
            chunk = request_ids[start : start + 500]
            result = await conn.execute(
                sa.select(audit_log.c.request_id, sa.func.count())
                .where(audit_log.c.request_id.in_(chunk))
                .group_by(audit_log.c.request_id)
            )
            counts.update({rid: int(n) for rid, n in result.tuples()})
    return counts


async def wait_audited(deployment: Deployment, request_ids: list[str], within_s: float) -> int:
    deadline = time.monotonic() + within_s
    while True:
        found = len(await audited(deployment, request_ids))
        if found == len(request_ids) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def books(deployment: Deployment, prefix: str) -> tuple[int, int]:
    async with connect(deployment.engine) as conn:
        tokens = await conn.scalar(
            sa.select(
                sa.func.coalesce(sa.func.sum(audit_log.c.tokens_in + audit_log.c.tokens_out), 0)
            ).where(audit_log.c.key_prefix == prefix)
        )
        key_id = sa.select(api_keys.c.id).where(api_keys.c.prefix == prefix).scalar_subquery()
        ledger = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(budget_usage.c.tokens), 0)).where(
                budget_usage.c.key_id == key_id, budget_usage.c.period == "total"
            )
        )
    return int(tokens), int(ledger)


async def test_poison_in_every_audited_field_never_stops_the_audit(
    rig: RigFactory, deployment: Deployment
) -> None:
    r = rig("--token-rate", "0", "--response-tokens", "5", TRUSTED_PROXIES="127.0.0.1/32")
    # Prompts are logged too: request bodies full of escapes, answers, in the same flush.
    await admin.set_prompt_log(deployment.engine, r.key[:12], enabled=True, retention_days=1)
    url, port = r.gateway.url, port_of(r.gateway.url)
    all_cases = list(cases(r.key))
    outcome = Outcome()
    later = [f"later-{uuid.uuid4().hex[:12]}" for _ in range(5)]
    with probing(url) as probes:
        burst(port, all_cases, outcome)
        # Later requests are audited while the gateway runs: the writer did not stall.
        for request_id in later:
            answer = httpx.post(
                url + "/api/chat",
                headers={**r.auth, "X-Request-ID": request_id},
                json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
            assert answer.status_code == 200
        assert await wait_audited(deployment, later, within_s=10) == len(later)
        time.sleep(0.6)  # a few more probes after the last burst
    # Ready all along, the audit included.
    assert len(probes) >= 3
    expected = {
        "database": "ok",
        "state_store": "ok" if deployment.redis_url else "in-process",
        "backend": "ok",
        "audit": "ok",
        "background": "ok",
    }
    assert {(status, tuple(sorted(checks.items()))) for status, checks in probes} == {
        (200, tuple(sorted(expected.items())))
    }

    # A last burst, then SIGTERM at once: the drain at shutdown writes what still waits.
    burst(port, all_cases[:40], outcome)
    assert stop_gateway(r.gateway) == 0  # SIGTERM: a graceful stop drains the buffer
    output = r.gateway.output()
    for trouble in ("audit_rows_lost_at_shutdown", "audit_flush_crashed", "audit_row_lost"):
        assert trouble not in output

    request_ids = [*outcome.request_ids, *later]
    counts = await audited(deployment, request_ids)
    print(
        f"{deployment.mode}: {len(all_cases) + 40 + len(later)} requests sent, "
        f"{len(request_ids)} answered by the application ({outcome.by_parser} refused by "
        f"the HTTP parser), {sum(counts.values())} audit rows"
    )
    assert len(set(request_ids)) == len(request_ids)
    assert counts == dict.fromkeys(request_ids, 1)  # every request once, none twice
    refusable = sum(
        any(_CONTROL.search(value) for _, value in case.headers)
        for case in [*all_cases, *all_cases[:40]]
    )
    assert outcome.by_parser == refusable
    tokens, ledger = await books(deployment, r.key[:12])
    assert tokens == ledger > 0


async def test_audited_strings_are_clean_where_they_entered(
    rig: RigFactory, deployment: Deployment
) -> None:
    """What the fuzz above stores is sanitised at its entry: no control character, no
    lone surrogate, no key, nothing longer than the audit keeps."""
    r = rig("--token-rate", "0", "--response-tokens", "5", TRUSTED_PROXIES="127.0.0.1/32")
    outcome = Outcome()
    burst(port_of(r.gateway.url), list(cases(r.key)), outcome)
    assert stop_gateway(r.gateway) == 0
    async with connect(deployment.engine) as conn:
        rows = (
            await conn.execute(
                sa.select(
                    audit_log.c.request_id,
                    audit_log.c.endpoint,
                    audit_log.c.model,
                    audit_log.c.client_ip,
                    audit_log.c.key_prefix,
                ).where(audit_log.c.request_id.in_(outcome.request_ids))
            )
        ).all()
    assert len(rows) == outcome.answered
    dirty = []
    for row in rows:
        for name, value in row._mapping.items():
            if value is None:
                continue
            unprintable = any(
                ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in value
            )
            if unprintable or len(value) > 200 or r.key in value:
                dirty.append((name, value[:24]))
    assert not dirty, dirty
