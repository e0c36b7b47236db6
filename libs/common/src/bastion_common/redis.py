"""The services' async Redis client.

Short timeouts everywhere: a security check that waits on a dead Redis must fail fast
(and closed), not hang the request. redis-py bounds every read and write by the socket
timeout, retries once on a dropped connection (a Redis restart), and closes a connection
on any error or cancellation, so no answer is ever read for the wrong command.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry  # the asyncio one: redis.retry's cannot await a command
from redis.backoff import ExponentialBackoff

__all__ = ["Redis", "create_redis"]


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
