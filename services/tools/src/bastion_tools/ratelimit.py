"""Token-bucket rate limits and the revocation check, in one Redis round trip.

Buckets live in Redis, so every replica of `tools` draws from the same ones. One Lua
script (EVALSHA) refuses a denylisted token or takes the call's cost from the
principal's bucket, atomically; `retry_after` is computed from the bucket, not fixed.
When Redis cannot answer the caller gets `LimiterUnavailable` and must refuse the call
(fail closed: no revocation check, no limit, no call).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bastion_common.permissions import DEFAULT_RATE_LIMITS
from bastion_tools.store import BUCKET_SCRIPT, bucket_ttl_ms

__all__ = ["Decision", "LimiterUnavailable", "RateLimiter", "limits_for_roles"]

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


class RateLimiter:
    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(BUCKET_SCRIPT)

    async def take(
        self,
        bucket_key: str,
        *,
        capacity: int,
        refill_per_second: float,
        cost: int = 1,
        denylist_key: str = "",
    ) -> Decision:
        try:
            raw = await self._script(
                keys=[denylist_key, bucket_key],
                args=[
                    capacity,
                    refill_per_second,
                    cost,
                    bucket_ttl_ms(capacity, refill_per_second),
                ],
            )
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
