"""The ways services open their async Redis connection.

Short timeouts everywhere: a security check that waits on a dead Redis must fail fast
(and closed), not hang the request.

- `create_redis`: the service's general client (pipelines, pub/sub, streams), with
  redis-py's socket timeouts.
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

from typing import Any, NoReturn, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry  # the asyncio one: redis.retry's cannot await a command
from redis.backoff import ExponentialBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from bastion_common.timeouts import SharedTimeout

__all__ = ["CommandRedis", "Redis", "create_command_redis", "create_redis"]


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
