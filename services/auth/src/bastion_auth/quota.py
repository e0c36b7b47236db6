"""Per-address budgets for what unauthenticated requests may create in Redis.

Anyone may register a client (RFC 7591) or start an authorization request, and each one
leaves state behind (a client record, a pending request, a browser session). So each
address gets a fixed-window budget per kind (`QUOTA` in store.py, its TTL the window):
past it the request is refused with 429 and Retry-After, and audited. Pending requests
live `AUTH_REQUEST_TTL`, so a window of that length also bounds how many an address can
hold at once. The address is `bastion_common.clientip`'s (trusted proxies honoured).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from bastion_auth.store import QUOTA

__all__ = ["AddressQuota"]

# KEYS: the counter. ARGV: the window (s). Returns {count, seconds left in the window}.
_TAKE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""


@dataclass
class AddressQuota:
    redis: Redis
    name: str
    limit: int
    window: int

    def __post_init__(self) -> None:
        self._take = self.redis.register_script(_TAKE)

    async def take(self, ip: str) -> int | None:
        """Spend one from `ip`'s budget: None while within it, else the seconds to wait."""
        count, ttl = await self._take(
            keys=[QUOTA.format(name=self.name, ip=ip)], args=[self.window]
        )
        if int(count) <= self.limit:
            return None
        return max(1, int(ttl))
