"""The services' async Redis clients (redis-py).

Short timeouts everywhere: a security check that waits on a dead Redis must fail fast
(and closed), not hang the request. redis-py retries once on a dropped connection (a
Redis restart) and closes a connection on any error or cancellation, so no answer is
ever read for the wrong command.

- `create_redis`: the general client; every read and write bounded by the socket timeout.
- `OwnConnection`: one connection of a caller's own for commands sent one group at a
  time on the hot path (see its docstring for why it pays).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry  # the asyncio one: redis.retry's cannot await a command
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["OwnConnection", "Redis", "create_redis"]


def create_redis(url: str, *, timeout: float = 2.0, max_connections: int = 200) -> Redis:
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        max_connections=max_connections,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=1),
    )


class OwnConnection:
    """One redis-py connection of a caller's own, with `redis`'s settings, for a caller
    that sends one group of commands at a time (a lock keeps it so): the rate limiter's
    batches, the audit publisher's XADDs.

    It skips redis-py's pool and command layer and packs with hiredis; each group's
    whole round trip is bounded by one `asyncio.timeout`. Measured with
    bench/tools_instructions.py: through redis-py's client (single-connection, bounded
    the same way) the pipeline cost 459,480 instructions per call, 80% more than with
    this. On any error or cancellation the connection is dropped (never a reply read for
    the wrong command); a dropped connection (Redis restarted) is retried once.
    """

    def __init__(self, redis: Redis, *, timeout: float = 2.0) -> None:
        pool = redis.connection_pool
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._connection_class = pool.connection_class
        self.timeout = timeout
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()

    async def execute(self, *commands: Sequence[Any]) -> list[Any]:
        """The replies of `commands`, sent in one write (a pipeline without MULTI); an
        error reply raises, as redis-py's would."""
        packed = b"".join(hiredis.pack_command(tuple(command)) for command in commands)
        try:
            async with asyncio.timeout(self.timeout), self._lock:
                if self._conn is None:
                    self._conn = self._connection_class(**self._kwargs)
                try:
                    return await self._round_trip(self._conn, packed, len(commands))
                except RedisConnectionError:
                    return await self._round_trip(self._conn, packed, len(commands))
        except TimeoutError:
            raise RedisTimeoutError(f"no answer from Redis within {self.timeout} s") from None

    @staticmethod
    async def _round_trip(conn: AbstractConnection, packed: bytes, count: int) -> list[Any]:
        try:
            await conn.send_packed_command(packed)
            return [await conn.read_response() for _ in range(count)]
        except BaseException:
            await conn.disconnect()  # replies may be left unread: never read them later
            raise
