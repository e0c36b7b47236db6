"""Token-bucket rate limits and the revocation check, in one Redis round trip.

Buckets live in Redis, so every replica of `tools` draws from the same ones. One Lua
script (EVALSHA) refuses a denylisted token or takes the call's cost from the
principal's bucket, atomically; `retry_after` is computed from the bucket, not fixed.
When Redis cannot answer the caller gets `LimiterUnavailable` and must refuse the call
(fail closed: no revocation check, no limit, no call).

Decisions asked for in the same turn of the event loop travel together: one pipeline of
EVALSHAs, one round trip for all of them. Under load most calls share their round trip
with others (each call still makes at most one), which halves what the redis client
costs per decision; a lone call waits no longer than before (one loop turn).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from bastion_common.permissions import DEFAULT_RATE_LIMITS
from bastion_tools.store import BUCKET_SCRIPT, bucket_ttl_ms

__all__ = ["Decision", "LimiterUnavailable", "RateLimiter", "limits_for_roles"]

BATCH_SIZE = Histogram(
    "bastion_tools_limiter_batch_size",
    "Rate-limit decisions sent to Redis in one round trip",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
Status = Literal["allowed", "refused", "revoked"]
_STATUS: dict[int, Status] = {1: "allowed", 0: "refused", -1: "revoked"}


class LimiterUnavailable(Exception):
    """Redis did not answer: the call cannot be checked, so it is refused."""


@dataclass(frozen=True, slots=True)
class Decision:
    status: Status
    capacity: int
    remaining: float
    retry_after: float
    refill_per_second: float

    @property
    def allowed(self) -> bool:
        return self.status == "allowed"

    @property
    def reset_seconds(self) -> int:
        """Seconds until the bucket is full again (RateLimit-Reset)."""
        missing = max(0.0, self.capacity - self.remaining)
        return int(-(-missing // self.refill_per_second))


def limits_for_roles(
    roles: Iterable[str], overrides: Mapping[str, tuple[int, float]] | None = None
) -> tuple[int, float]:
    """The most generous (capacity, refill) among `roles`; no known role means guest."""
    table = {**DEFAULT_RATE_LIMITS, **(overrides or {})}
    known = [table[role] for role in roles if role in table]
    return max(known, key=lambda limit: limit[0]) if known else table["guest"]


_Request = tuple[Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class RateLimiter:
    def __init__(self, redis: Redis, *, max_batch: int = 128) -> None:
        self._redis = redis
        self._sha = hashlib.sha1(BUCKET_SCRIPT.encode(), usedforsecurity=False).hexdigest()
        self._max_batch = max_batch
        self._pending: list[_Request] = []
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()

    async def take(
        self,
        bucket_key: str,
        *,
        capacity: int,
        refill_per_second: float,
        cost: int = 1,
        denylist_key: str = "",
    ) -> Decision:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        keys = (denylist_key, bucket_key)
        args = (capacity, refill_per_second, cost, bucket_ttl_ms(capacity, refill_per_second))
        self._pending.append((keys, args, answer))
        if len(self._pending) >= self._max_batch:
            self._dispatch()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        try:
            raw = await answer
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(type(exc).__name__) from None
        status, remaining, retry = raw
        return Decision(
            status=_STATUS[int(status)],
            capacity=capacity,
            remaining=float(remaining),
            retry_after=float(retry),
            refill_per_second=refill_per_second,
        )

    def _dispatch(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)  # held until done, so it is not garbage-collected
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Request]) -> None:
        BATCH_SIZE.observe(len(batch))
        try:
            results = await self._evaluate(batch)
        except BaseException as exc:  # every caller gets the failure: nobody waits forever
            failure = exc if isinstance(exc, RedisError | OSError) else RedisError(repr(exc))
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, answer), result in zip(batch, results, strict=True):
            if answer.done():  # the caller went away (cancelled); its tokens are spent
                continue
            if isinstance(result, Exception):
                answer.set_exception(
                    result if isinstance(result, RedisError) else RedisError(repr(result))
                )
            else:
                answer.set_result(result)

    async def _evaluate(self, batch: Sequence[_Request]) -> list[Any]:
        results = await self._pipeline(batch)
        if any(isinstance(result, NoScriptError) for result in results):
            # Redis restarted or was flushed: load the script, ask again (once).
            await self._redis.script_load(BUCKET_SCRIPT)
            results = await self._pipeline(batch)
        return results

    async def _pipeline(self, batch: Sequence[_Request]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(self._sha, 2, *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
