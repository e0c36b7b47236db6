"""Brute-force protection for the login form (RFC 9700 §4.x, OWASP ASVS V2.2).

Counted per username tried (whether or not it exists, so a lockout reveals nothing) and
per client IP, both over `lockout_window`. From `lockout_threshold` failures an account is
locked for a delay that doubles with each further failure, up to `lockout_max_delay`.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from bastion_auth.settings import Settings
from bastion_auth.store import LOCK_ACCOUNT_FAILS, LOCK_ACCOUNT_UNTIL, LOCK_IP_FAILS

__all__ = ["Lockout", "LockState"]

# Count a failure and, past the threshold, lock: one atomic step per failure.
_FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ip = redis.call('INCR', KEYS[3])
if ip == 1 then redis.call('EXPIRE', KEYS[3], ARGV[1]) end
local delay = 0
local threshold = tonumber(ARGV[2])
if n >= threshold then
  delay = math.min(tonumber(ARGV[3]) * 2 ^ (n - threshold), tonumber(ARGV[4]))
  redis.call('SET', KEYS[2], '1', 'EX', math.floor(delay))
end
return {n, ip, math.floor(delay)}
"""


@dataclass(frozen=True)
class LockState:
    account_locked: bool
    ip_blocked: bool

    @property
    def refused(self) -> bool:
        return self.account_locked or self.ip_blocked


class Lockout:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._s = settings
        self._fail = redis.register_script(_FAIL)

    @staticmethod
    def _account(username: str) -> str:
        return username.strip().lower()[:64]

    async def state(self, username: str, ip: str) -> LockState:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(LOCK_ACCOUNT_UNTIL.format(username=self._account(username)))
            pipe.get(LOCK_IP_FAILS.format(ip=ip))
            locked, ip_fails = await pipe.execute()
        return LockState(bool(locked), int(ip_fails or 0) >= self._s.ip_failure_limit)

    async def failed(self, username: str, ip: str) -> tuple[int, int, int]:
        """Record a failure: (account failures, IP failures, lock seconds now set)."""
        account = self._account(username)
        n, ip_n, delay = await self._fail(
            keys=[
                LOCK_ACCOUNT_FAILS.format(username=account),
                LOCK_ACCOUNT_UNTIL.format(username=account),
                LOCK_IP_FAILS.format(ip=ip),
            ],
            args=[
                self._s.lockout_window,
                self._s.lockout_threshold,
                self._s.lockout_base_delay,
                self._s.lockout_max_delay,
            ],
        )
        return int(n), int(ip_n), int(delay)

    async def succeeded(self, username: str) -> None:
        await self._redis.delete(LOCK_ACCOUNT_FAILS.format(username=self._account(username)))
