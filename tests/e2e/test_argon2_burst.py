"""Key verification under attack, against a real gateway process (issue 13, items 4-6;
SPEC §3 rows "argon2 bursts racing the failure limiter", "owner lockout by someone who
knows a prefix" and "ambiguous credentials").

The limiter is per process, so each test that spends it runs a gateway of its own (the
``rig``), in both storage modes. Client addresses come through ``X-Forwarded-For`` from
a trusted loopback proxy (``TRUSTED_PROXIES=127.0.0.1/32``), and argon2 runs are read
from the gateway's own counter on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from nz_core import admin
from nz_core.keys import KeyHasher, generate_key
from nz_proxy.auth import FailureLimiter
from tests.e2e.conftest import Deployment, RigFactory
from tests.processes import stop_process

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}], "stream": False}
BURST = 200
DEFAULTS = FailureLimiter()  # the limits a gateway runs with
# Another tenant's cached key must not notice the burst (issue 13: p99 under 250 ms).
OTHER_P99_S = 0.25


def bearer(key: str, address: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if address is not None:
        headers["X-Forwarded-For"] = address
    return headers


def wrong_secret(key: str) -> str:
    return key[:12] + generate_key()[12:]


def verifications(url: str) -> float:
    """argon2 runs so far. The counter is updated just after each response is sent, so
    the last request's update gets a moment first."""
    time.sleep(0.3)
    text = httpx.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("gateway_key_verifications_total "):
            return float(line.split()[1])
    return 0.0


def surface_of(path: str) -> str:
    return "openai" if path.startswith("/v1/") else "ollama"


def assert_busy(status: int, headers: dict[str, str], body: bytes, surface: str) -> None:
    """503 verification_busy with a Retry-After a client can honour (SPEC §6.2, §6.5)."""
    assert status == 503, (status, body)
    retry_after = int(headers["retry-after"])
    assert 1 <= retry_after <= 60, retry_after
    error = json.loads(body)["error"]
    if surface == "openai":
        assert (error["type"], error["code"]) == ("api_error", "verification_busy")
    else:
        assert isinstance(error, str)
    assert "www-authenticate" not in headers  # nothing says the key is wrong


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def burst(url: str, requests: list[tuple[str, dict[str, str]]]) -> list[Answer]:
    """Send every request at the same moment, one connection each: all connections are
    opened first, then all requests written in one turn of the loop. A bare HTTP/1.1
    client, so the burst is not paced by a client library's CPU."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = json.dumps(CHAT).encode()
    connections = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in requests))

    async def exchange(
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        path: str,
        headers: dict[str, str],
    ) -> Answer:
        reader, writer = connection
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            lines = head.decode("latin-1").split("\r\n")
            fields = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(fields.get("content-length", "0")))
            return Answer(int(lines[0].split()[1]), fields, body)
        finally:
            writer.close()

    for (_, writer), (path, headers) in zip(connections, requests, strict=True):
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
    return list(
        await asyncio.gather(
            *(exchange(c, p, h) for c, (p, h) in zip(connections, requests, strict=True))
        )
    )


# The neighbour runs in a process of its own: in a thread of the test process, its
# timings would include the burst client's hold on the GIL, not only the gateway's work.
NEIGHBOUR = """
import json, sys, time, httpx
url, key, body = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with httpx.Client(base_url=url, timeout=30) as client:
    while True:
        started = time.monotonic()
        answer = client.post("/api/chat", headers={"Authorization": "Bearer " + key}, json=body)
        print(json.dumps([started, time.monotonic() - started, answer.status_code]), flush=True)
"""


@dataclass
class Tenant:
    """Another tenant with a cached key, asking one request after another from a process
    of its own, timing each (start on the shared monotonic clock, seconds, status)."""

    url: str
    key: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    samples: list[tuple[float, float, int]] = field(default_factory=list)

    def __enter__(self) -> Tenant:
        with self.log.open("wb") as sink:  # a file, never a pipe nobody drains
            self.process = subprocess.Popen(
                [sys.executable, "-c", NEIGHBOUR, self.url, self.key, json.dumps(CHAT)],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while self.log.read_text().count("\n") < 5:  # running, connection warm
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the neighbour did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.process is not None
        stop_process(self.process)
        for line in self.log.read_text().splitlines():
            with suppress(ValueError):
                started, seconds, status = json.loads(line)
                self.samples.append((started, seconds, status))

    def between(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [s for s in self.samples if start <= s[0] <= end]


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def test_a_burst_of_wrong_secrets_on_a_cold_prefix_costs_at_most_the_prefix_limit(
    deployment: Deployment, rig: RigFactory, tmp_path: Path
) -> None:
    """200 wrong secrets for one cold prefix, all in flight at once, each from its own
    address (so only the per-prefix limit binds). Before, each passed the limiter's
    check while the others were still hashing: dozens of argon2 runs. The key is hashed
    with the production profile, so each run costs what it costs in production."""
    r = rig("--token-rate", "0", TRUSTED_PROXIES="127.0.0.1/32")
    url = r.gateway.url
    tenant = await deployment.tenant(models=["llama3.2"])
    cold = (await admin.create_key(deployment.engine, tenant, "cold", hasher=KeyHasher())).key
    other = await deployment.key(models=["llama3.2"])
    assert httpx.post(url + "/api/chat", headers=bearer(other), json=CHAT).status_code == 200
    requests = [
        (
            "/v1/chat/completions" if i % 2 else "/api/chat",
            bearer(wrong_secret(cold), f"10.13.{i // 100}.{i % 100 + 1}"),
        )
        for i in range(BURST)
    ]
    before = verifications(url)
    with Tenant(url, other, tmp_path / "neighbour.log") as neighbour:
        start = time.monotonic()
        answers = await burst(url, requests)
        end = time.monotonic()
        await asyncio.sleep(0.2)
    runs = verifications(url) - before
    statuses = Counter(a.status for a in answers)
    during = neighbour.between(start, end)
    latencies = [seconds for _, seconds, _ in during]
    owner = httpx.post(url + "/api/chat", headers=bearer(cold, "192.0.2.50"), json=CHAT)
    print(
        f"\n[argon2 burst, {deployment.mode}] {BURST} wrong secrets on one cold prefix in "
        f"{end - start:.2f}s: answers {dict(statuses)}; argon2 runs {runs:.0f} (limit "
        f"{DEFAULTS.per_prefix}); other tenant during the burst: {len(latencies)} requests, "
        f"p50 {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms, "
        f"p99 {p99(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
        f"the key's owner right after: {owner.status_code}"
    )
    assert runs <= DEFAULTS.per_prefix, runs
    assert set(statuses) <= {401, 503}, statuses
    assert statuses[401] == runs  # every argon2 run was a wrong secret found wrong
    for answer, (path, _) in zip(answers, requests, strict=True):
        if answer.status == 503:
            assert_busy(answer.status, answer.headers, answer.body, surface_of(path))
    # Every one of the neighbour's requests succeeded, and fast.
    assert {status for _, _, status in neighbour.samples} == {200}
    assert len(latencies) >= 3, during
    assert p99(latencies) < OTHER_P99_S, latencies
    # The right key: verified, or told to retry; never the 401 that says "wrong key".
    if owner.status_code == 503:
        assert_busy(owner.status_code, dict(owner.headers), owner.content, "ollama")
    else:
        assert owner.status_code == 200, owner.text


async def test_eleven_wrong_secrets_do_not_lock_out_the_owners_uncached_key(
    deployment: Deployment, rig: RigFactory
) -> None:
    """Before, eleven wrong secrets from anywhere locked a key nobody had used yet out
    for a minute, and the owner got the 401 that says the key is wrong."""
    r = rig("--token-rate", "0", TRUSTED_PROXIES="127.0.0.1/32")
    url = r.gateway.url
    tenant = await deployment.tenant(models=["llama3.2"])
    owner = await deployment.key(tenant)
    with httpx.Client(base_url=url, timeout=30) as client:

        def post(key: str, address: str, path: str = "/api/chat") -> httpx.Response:
            return client.post(path, headers=bearer(key, address), json=CHAT)

        guesses = [post(wrong_secret(owner), "198.51.100.7") for _ in range(11)]
        # The owner, elsewhere: verified (and cached from now on).
        assert post(owner, "192.0.2.10").status_code == 200
        # The guesser reached argon2 as often as one address may fail on one prefix,
        # then was turned away with a 503 (not verified, so not a 401).
        pair = DEFAULTS.per_pair
        assert [g.status_code for g in guesses] == [401] * pair + [503] * (11 - pair)
        for guess in guesses[pair:]:
            assert_busy(guess.status_code, dict(guess.headers), guess.content, "ollama")

        # One address failing on several prefixes spends its 30: another tenant's
        # uncached key behind that address is not verified, and not called wrong either.
        victims = [await deployment.key(tenant) for _ in range(DEFAULTS.per_address // pair)]
        for victim in victims:
            for _ in range(pair):
                assert post(wrong_secret(victim), "203.0.113.9").status_code == 401
        neighbour = await deployment.key(models=["llama3.2"])
        busy = post(neighbour, "203.0.113.9", "/v1/chat/completions")
        assert_busy(busy.status_code, dict(busy.headers), busy.content, "openai")
        assert post(neighbour, "203.0.113.10").status_code == 200
        # Once verified, that key works behind the spent address too (it is cached).
        assert post(neighbour, "203.0.113.9").status_code == 200


async def test_ambiguous_credentials_get_the_401(deployment: Deployment) -> None:
    """Two Authorization headers, or an x-api-key that differs from the bearer token,
    are refused even when one of them is the right key (a proxy in front may have
    read the other); the same key in both is fine. Granian keeps repeated headers, so
    this is decided on what the client sent."""
    good = await deployment.key(models=["llama3.2"])
    other = await deployment.key(models=["llama3.2"])
    with httpx.Client(base_url=deployment.url, timeout=30) as client:
        assert client.post("/api/chat", headers=bearer(good), json=CHAT).status_code == 200
        for headers in (
            [("Authorization", f"Bearer {generate_key()}"), ("Authorization", f"Bearer {good}")],
            [("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {good}")],
            [("Authorization", f"Bearer {good}"), ("x-api-key", other)],
            [("x-api-key", other), ("Authorization", f"Bearer {good}")],
            [("x-api-key", good), ("x-api-key", good)],
        ):
            for path in ("/api/chat", "/v1/chat/completions"):
                refused = client.post(path, headers=headers, json=CHAT)
                assert refused.status_code == 401, (path, headers)
                assert refused.headers["www-authenticate"].startswith("Bearer")
        same = [("Authorization", f"Bearer {good}"), ("x-api-key", good)]
        assert client.post("/v1/chat/completions", headers=same, json=CHAT).status_code == 200
