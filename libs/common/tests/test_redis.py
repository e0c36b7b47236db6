"""The hot-path Redis client: every command bounded as a whole, a connection cut off by
the timeout never reused. Against a real redis-server and a TCP server that never
answers."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bastion_common.redis import DirectConnection, create_command_redis, create_redis
from tests.redis_process import RedisProcess, silent_server

pytestmark = pytest.mark.anyio


async def test_a_redis_that_never_answers_times_out_every_command() -> None:
    async with silent_server() as (port, held):
        client = create_command_redis(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        try:
            for _ in range(3):
                with pytest.raises(RedisTimeoutError, match="within 0.3 s"):
                    await client.get("weather:obs:oslo")
        finally:
            await client.aclose()
        assert len(held) == 3  # each timed-out connection was dropped, a new one opened


async def test_a_command_cut_off_leaves_no_answer_behind(redis_url: str) -> None:
    """A BLPOP that outlives the timeout: its connection is closed (Redis forgets the
    blocked pop), and the next command on the client gets its own answer."""
    client = create_command_redis(redis_url, timeout=0.3)
    other = create_redis(redis_url)
    try:
        with pytest.raises(RedisTimeoutError):
            await client.execute_command("BLPOP", "queue", 30)
        with anyio.fail_after(5):
            while (await other.info("clients"))["blocked_clients"] != 0:
                await anyio.sleep(0.02)
        await other.lpush("queue", "kept")
        assert await client.set("answer", "42")
        assert await client.get("answer") == b"42"
        assert await other.lrange("queue", 0, -1) == [b"kept"]
    finally:
        await client.aclose()
        await other.aclose()


async def test_pipelines_and_pubsub_are_refused_as_they_would_not_be_bounded(
    redis_url: str,
) -> None:
    client = create_command_redis(redis_url)
    try:
        with pytest.raises(TypeError, match="pipeline"):
            client.pipeline()
        with pytest.raises(TypeError, match="pub/sub"):
            client.pubsub()
    finally:
        await client.aclose()


async def test_the_first_command_after_a_redis_restart_is_retried_not_failed(
    redis_server: RedisProcess,
) -> None:
    """Every pooled connection is dead after a restart: the client's retry (one, on a new
    connection) must answer the next command instead of failing it. redis.retry's Retry
    (the synchronous one) silently never retried an asyncio command."""
    general = create_redis(redis_server.url)
    command = create_command_redis(redis_server.url)
    direct = DirectConnection(general)
    try:
        for client in (general, command):
            await asyncio.gather(*(client.ping() for _ in range(4)))  # four pooled connections
        assert await direct.execute("PING") == b"PONG"
        redis_server.stop()
        redis_server.start()
        assert await general.set("after", "restart")
        assert await command.get("after") == b"restart"
        assert await direct.execute_many([("GET", "after"), ("PING",)]) == [b"restart", b"PONG"]
    finally:
        await direct.aclose()
        await general.aclose()
        await command.aclose()


async def test_an_error_reply_in_a_group_drops_the_connection_not_the_next_answers(
    redis_url: str,
) -> None:
    """A reply that is an error raises; the replies behind it were never read, so the
    connection is dropped and the next group reads only its own replies."""
    general = create_redis(redis_url)
    direct = DirectConnection(general)
    try:
        await direct.execute("SET", "text", "not a list")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await direct.execute_many([("LPUSH", "text", "x"), ("SET", "second", "1")])
        assert await direct.execute_many([("GET", "second"), ("GET", "text")]) == [
            b"1", b"not a list"
        ]  # fmt: skip
        assert await direct.execute("GET", "text") == b"not a list"
    finally:
        await direct.aclose()
        await general.aclose()


async def test_a_direct_connection_that_gets_no_answer_times_out_and_reconnects() -> None:
    async with silent_server() as (port, held):
        general = create_redis(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        direct = DirectConnection(general)
        try:
            for _ in range(2):
                with pytest.raises(RedisTimeoutError, match="within 0.3 s"):
                    await direct.execute("PING")
        finally:
            await direct.aclose()
            await general.aclose()
        assert len(held) == 2  # the timed-out connection was dropped, a new one opened
