"""Token-bucket rate limits and the revocation check, in one Redis round trip.

Buckets live in Redis, so every replica of `tools` draws from the same ones. One Lua
script (EVALSHA) refuses a denylisted token, or one whose subject was signed out,
disabled or demoted after it was issued, or takes the call's cost from the principal's
bucket, atomically; `retry_after` is computed from the bucket, not fixed.
When Redis cannot answer the caller gets `LimiterUnavailable` and must refuse the call
(fail closed: no revocation check, no limit, no call).

Decisions travel in batches, one round trip each, without waiting on a timer: a call that
finds the limiter idle queues and asks the event loop to call back at the end of its
current turn, so every call made in that turn goes with it; calls that come while a
batch is in flight queue, and the first of them sends them all, together, as soon as that
batch is answered (group commit). Each call still makes at most one round trip (it may
wait for the one before), and one script invocation decides the whole batch, each call as
if it ran alone. Under load this cuts what the Redis client costs per decision several
times; at one connection a call waits one turn of an idle loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from bastion_common.permissions import DEFAULT_RATE_LIMITS
from bastion_common.redis import OwnConnection
from bastion_tools.store import BUCKET_SCRIPT, bucket_ttl_ms

__all__ = ["Decision", "LimiterUnavailable", "RateLimiter", "limits_for_roles"]

BATCH_SIZE = Histogram(
    "bastion_tools_limiter_batch_size",
    "Rate-limit decisions sent to Redis in one round trip",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
Status = Literal["allowed", "refused", "revoked"]
_STATUS: dict[int, Status] = {1: "allowed", 0: "refused", -1: "revoked"}  # -2: unreadable


class LimiterUnavailable(Exception):
    """Redis did not answer: the call cannot be checked, so it is refused."""


class Decision(NamedTuple):
    """One call's answer."""

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
        """Seconds until the bucket is full again (`t` of the RateLimit header)."""
        missing = max(0.0, self.capacity - self.remaining)
        return int(-(-missing // self.refill_per_second))


def limits_for_roles(
    roles: Iterable[str],
    overrides: Mapping[str, tuple[int, float]] | None = None,
    base: Mapping[str, tuple[int, float]] = DEFAULT_RATE_LIMITS,
) -> tuple[int, float]:
    """The most generous (capacity, refill) among `roles`. `base` is the policy file's
    roles' limits, `overrides` the setting's. No known role: the smallest bucket there is
    (guest's, with the built-in roles)."""
    table = {**base, **(overrides or {})} or dict(DEFAULT_RATE_LIMITS)
    known = [table[role] for role in roles if role in table]
    if known:
        return max(known, key=lambda limit: limit[0])
    return min(table.values(), key=lambda limit: limit[0])


# A call's script arguments: denylist key, subject key, bucket key; capacity, refill,
# cost, ttl ms, cut-off field, issued at.
_Call = tuple[str, str, str, int, float, int, int, str, float]
_LEAD: Any = object()  # a waiting call's answer that says: the batch before is done, send


class RateLimiter:
    def __init__(self, redis: Redis, *, max_batch: int = 256, timeout: float = 2.0) -> None:
        # One batch is in flight at a time: a connection of its own (see OwnConnection).
        self._redis = redis
        self._conn = OwnConnection(redis, timeout=timeout)
        self._sha = hashlib.sha1(BUCKET_SCRIPT.encode(), usedforsecurity=False).hexdigest()
        self._max_batch = max(1, max_batch)
        self._busy = False  # a batch is in flight
        self._waiting: deque[tuple[_Call, asyncio.Future[Any]]] = deque()

    async def aclose(self) -> None:
        await self._conn.aclose()

    async def take(
        self,
        bucket_key: str,
        *,
        capacity: int,
        refill_per_second: float,
        cost: int = 1,
        denylist_key: str = "",
        subject_key: str = "",
        cutoff_field: str = "",
        issued_at: float = 0.0,
    ) -> Decision:
        """Refuse a denylisted token, or one issued at or before its subject's
        `cutoff_field` (`bastion_common.subjects`), else take `cost` from the bucket."""
        call = (denylist_key, subject_key, bucket_key, capacity, refill_per_second, cost,
                bucket_ttl_ms(capacity, refill_per_second), cutoff_field, issued_at)  # fmt: skip
        try:
            if not self._busy:
                # Idle: the calls of this turn of the event loop go together. The first
                # waits for the turn's end (call_soon), then sends them all.
                self._busy = True
                asyncio.get_running_loop().call_soon(self._pass_on)
            raw = await self._wait(call)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(type(exc).__name__) from None
        status, remaining, retry = raw
        if status not in _STATUS:  # the script could not read this bucket
            raise LimiterUnavailable("bucket unreadable")
        return Decision(_STATUS[status], capacity, float(remaining), float(retry),
                        refill_per_second)  # fmt: skip

    async def _wait(self, call: _Call) -> Any:
        """Queue behind the batch in flight; the answer comes with the next batch, or
        says this call is to send it."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, answer))
        try:
            raw = await answer
        except asyncio.CancelledError:
            if (answer.done() and not answer.cancelled() and answer.exception() is None
                    and answer.result() is _LEAD):  # fmt: skip
                self._pass_on()  # chosen to send, then cancelled: the next one sends
            raise
        return await self._send(call) if raw is _LEAD else raw

    async def _send(self, own: _Call) -> Any:
        """Send `own` and every call waiting (up to `max_batch`) in one script
        invocation; answer the others; return `own`'s result."""
        self._busy = True
        calls = [own]
        answers: list[asyncio.Future[Any]] = []
        while self._waiting and len(calls) < self._max_batch:
            call, answer = self._waiting.popleft()
            if not answer.done():  # a caller that went away is not charged
                calls.append(call)
                answers.append(answer)
        BATCH_SIZE.observe(len(calls))
        try:
            results = await self._evaluate(calls)
        except BaseException as exc:  # every caller in the batch fails: nobody waits forever
            failure = exc if isinstance(exc, RedisError | OSError) else RedisError(repr(exc))
            for answer in answers:
                if not answer.done():
                    answer.set_exception(failure)
            raise
        finally:
            self._pass_on()
        for answer, result in zip(answers, results[1:], strict=True):
            if not answer.done():  # the caller went away (cancelled); its tokens are spent
                answer.set_result(result)
        return results[0]

    def _pass_on(self) -> None:
        """The batch in flight is answered: the first call still waiting sends the next."""
        while self._waiting:
            _call, answer = self._waiting.popleft()
            if not answer.done():
                answer.set_result(_LEAD)
                return
        self._busy = False

    async def _evaluate(self, calls: Sequence[_Call]) -> list[Any]:
        keys: list[str] = []
        args: list[Any] = []
        for deny, subject, bucket, capacity, refill, cost, ttl, field, issued in calls:
            keys.append(bucket)
            args += (deny, subject, capacity, refill, cost, ttl, field, repr(issued))
        evalsha = ("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            (results,) = await self._conn.execute(evalsha)
        except NoScriptError:  # Redis restarted or was flushed: load the script, once
            await self._redis.script_load(BUCKET_SCRIPT)
            (results,) = await self._conn.execute(evalsha)
        if not isinstance(results, list) or len(results) != len(calls):
            raise RedisError("unexpected answer from the bucket script")
        return results
