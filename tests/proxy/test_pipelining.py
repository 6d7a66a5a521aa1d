"""Auto-pipelining of script calls, against the real Redis.

What must hold: every caller gets its own script's reply, calls made together share a
connection, a script's error reaches only its caller, a connection error reaches every
caller, scripts Redis lost are reloaded, and a caller that gives up harms no other.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from nz_proxy.admission.stores.pipelining import ScriptPipeline
from tests import services
from tests.processes import free_port

# Echoes its first argument, or fails when asked to: a script with no keys, so the
# tests touch no state.
ECHO = """
if ARGV[1] == 'boom' then return redis.error_reply('boom') end
return ARGV[1]
"""
# Holds Redis for 50 ms: a direct call on the wire, so the calls after it are batched.
SLOW = """
local start = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > 50000
return 'slow'
"""


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    name = "pipelining-" + uuid.uuid4().hex[:8]
    client = aioredis.Redis.from_url(services.redis_url(), client_name=name)
    try:
        yield client
    finally:
        await client.aclose()


async def _connections(client: aioredis.Redis) -> int:
    name = client.connection_pool.connection_kwargs["client_name"]
    clients = await client.client_list()
    return sum(1 for entry in clients if entry["name"] == name)


async def test_callers_made_together_share_a_connection(client: aioredis.Redis) -> None:
    script: AsyncScript = client.register_script(ECHO)
    calls = ScriptPipeline(client)
    replies = await asyncio.gather(*(calls.run(script, [], [f"call-{i}"]) for i in range(50)))
    assert replies == [f"call-{i}".encode() for i in range(50)]
    # One direct call and one pipeline for the other 49; one by one would need 50.
    assert await _connections(client) <= 2


async def test_a_lone_call_goes_straight_out(client: aioredis.Redis) -> None:
    script: AsyncScript = client.register_script(ECHO)
    calls = ScriptPipeline(client)
    for i in range(3):
        assert await calls.run(script, [], [str(i)]) == str(i).encode()
    assert await _connections(client) == 1


async def test_a_script_error_reaches_only_its_caller(client: aioredis.Redis) -> None:
    script: AsyncScript = client.register_script(ECHO)
    calls = ScriptPipeline(client)
    words = ["a", "b", "boom", "c"]
    replies = await asyncio.gather(
        *(calls.run(script, [], [word]) for word in words), return_exceptions=True
    )
    assert replies[:2] == [b"a", b"b"]
    assert replies[3] == b"c"
    assert isinstance(replies[2], ResponseError)
    assert "boom" in str(replies[2])


async def test_scripts_redis_lost_are_loaded_again(client: aioredis.Redis) -> None:
    script: AsyncScript = client.register_script(ECHO)
    slow: AsyncScript = client.register_script(SLOW)
    calls = ScriptPipeline(client)
    assert await calls.run(script, [], ["warm"]) == b"warm"
    await client.script_flush()  # what a Redis restart does to every script
    await client.script_load(SLOW)
    replies = await asyncio.gather(
        calls.run(slow, [], []), *(calls.run(script, [], [str(i)]) for i in range(10))
    )
    assert replies == [b"slow", *(str(i).encode() for i in range(10))]


async def test_a_connection_error_reaches_every_caller() -> None:
    # Nothing listens there: every call, direct or batched, must fail, none may hang.
    port = free_port()
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    try:
        script: AsyncScript = client.register_script(ECHO)
        calls = ScriptPipeline(client)
        replies = await asyncio.wait_for(
            asyncio.gather(
                *(calls.run(script, [], [str(i)]) for i in range(5)), return_exceptions=True
            ),
            timeout=10,
        )
        assert all(isinstance(reply, RedisConnectionError) for reply in replies), replies
    finally:
        await client.aclose()


async def test_a_caller_that_gives_up_harms_no_other(client: aioredis.Redis) -> None:
    script: AsyncScript = client.register_script(ECHO)
    calls = ScriptPipeline(client)
    tasks = [asyncio.create_task(calls.run(script, [], [str(i)])) for i in range(6)]
    await asyncio.sleep(0)  # all six are queued or on the wire
    tasks[3].cancel()
    replies = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(replies[3], asyncio.CancelledError)
    assert [reply for i, reply in enumerate(replies) if i != 3] == [
        str(i).encode() for i in range(6) if i != 3
    ]
    # Nothing is left waiting: the next call goes straight out again.
    assert await calls.run(script, [], ["after"]) == b"after"
