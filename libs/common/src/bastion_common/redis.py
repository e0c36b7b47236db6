"""The ways services open their async Redis connection.

Short timeouts everywhere: a security check that waits on a dead Redis must fail fast
(and closed), not hang the request.

- `create_redis`: the service's general client (pipelines, pub/sub, streams), with
  redis-py's socket timeouts.
- `DirectConnection`: one connection of a caller's own, outside any pool, for a
  caller that sends one command (or one group of commands) at a time on a hot path:
  the rate limiter's batches, the audit publisher's XADDs.
- `create_command_redis`: for simple commands on a hot path (a tool's reads and
  writes). Each command is bounded as a whole (send, read, retry, reconnect) by the
  client's `SharedTimeout` (one timer for all its commands, a quarter of what an
  `asyncio.timeout` per command costs) and the sockets have no timeout of their own:
  with a socket timeout redis-py wraps every write in `asyncio.wait_for`, which on
  Python 3.11 starts a task per command (about 17 us and an extra turn of the event
  loop). A command cut off by the timeout drops its connection (redis-py closes a
  connection on any error or cancellation), so no answer is ever read for the wrong
  command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NoReturn, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry  # the asyncio one: redis.retry's cannot await a command
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bastion_common.timeouts import SharedTimeout

__all__ = ["CommandRedis", "DirectConnection", "Redis", "create_command_redis", "create_redis"]


def _options(timeout: float, max_connections: int) -> dict[str, Any]:
    return {
        "decode_responses": False,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "max_connections": max_connections,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=1),
    }


def create_redis(url: str, *, timeout: float = 2.0, max_connections: int = 200) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout, **_options(timeout, max_connections))


class CommandRedis(Redis):
    """A client whose every command is bounded by `command_timeout` as a whole."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command_bounds = SharedTimeout(2.0)  # create_command_redis sets its own

    @property
    def command_timeout(self) -> float:
        return self.command_bounds.seconds

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            async with self.command_bounds.bound():
                return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except TimeoutError:
            raise RedisTimeoutError(
                f"no answer from Redis within {self.command_timeout} s"
            ) from None

    def pipeline(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("a pipeline would not be bounded: use create_redis for pipelines")

    def pubsub(self, **_kwargs: Any) -> NoReturn:
        raise TypeError("use create_redis for pub/sub")


def create_command_redis(
    url: str, *, timeout: float = 2.0, max_connections: int = 200
) -> CommandRedis:
    client = cast(
        CommandRedis,  # from_url builds the class it is called on
        CommandRedis.from_url(url, socket_timeout=None, **_options(timeout, max_connections)),
    )
    client.command_bounds = SharedTimeout(timeout)
    return client


class DirectConnection:
    """A connection of its own, with the settings of `redis`'s pool, for commands sent
    one group at a time (a lock keeps it so).

    It goes around the pool and redis-py's command layer, and hiredis packs the
    commands (redis-py's asyncio connection packs them in Python): that is most of what
    a command costs the client, two thirds of it for an XADD of a batch of audit
    events. The socket has no timeout of its own (redis-py would wrap every write in
    `asyncio.wait_for`, a task per command on Python 3.11); one bound (`SharedTimeout`)
    covers each group's whole round trip instead, retry and reconnect included. On any
    error or cancellation the connection is dropped (redis-py does so for its own
    errors; here also when a reply is an error with more replies still unread), so no
    reply is ever read for the wrong command. A dropped connection (Redis restarted) is
    retried once, as the client's own retry would; a command may then run twice.
    """

    def __init__(self, redis: Redis, *, timeout: float | None = None) -> None:
        pool = redis.connection_pool
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._connection_class = pool.connection_class
        if timeout is None:
            timeout = pool.connection_kwargs.get("socket_timeout") or 2.0
        self._bounds = SharedTimeout(timeout)
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    @property
    def timeout(self) -> float:
        return self._bounds.seconds

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()

    async def execute(self, *args: Any) -> Any:
        """One command's reply (an error reply raises, as redis-py's would)."""
        return (await self._run(hiredis.pack_command(args), 1))[0]

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies of `commands`, sent in one write (a pipeline without MULTI)."""
        packed = b"".join(hiredis.pack_command(tuple(command)) for command in commands)
        return await self._run(packed, len(commands))

    async def _run(self, packed: bytes, count: int) -> list[Any]:
        try:
            async with self._bounds.bound(), self._lock:  # the wait for the lock is bounded too
                conn = self._conn
                if conn is None:
                    conn = self._conn = self._connection_class(**self._kwargs)
                try:
                    return await self._round_trip(conn, packed, count)
                except RedisConnectionError:
                    return await self._round_trip(conn, packed, count)
        except TimeoutError:
            raise RedisTimeoutError(f"no answer from Redis within {self.timeout} s") from None

    @staticmethod
    async def _round_trip(conn: AbstractConnection, packed: bytes, count: int) -> list[Any]:
        await conn.send_packed_command(packed)
        if count == 1:
            return [await conn.read_response()]
        try:
            return [await conn.read_response() for _ in range(count)]
        except BaseException:
            await conn.disconnect()  # replies may be left unread: never read them later
            raise
