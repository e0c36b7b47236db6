"""Brute-force protection for the login form (RFC 9700 §4.x, OWASP ASVS V2.2).

Counted per account name tried (whether or not it exists, so a lockout reveals nothing)
and per client IP, both over `lockout_window`. From `lockout_threshold` attempts an
account is locked for a delay that doubles with each further attempt, up to
`lockout_max_delay`.

An attempt is reserved before its password is checked, in one atomic step: a parallel
burst cannot all pass the lock check while the slow password hash runs, so at most
`lockout_threshold` of them are ever evaluated. A successful sign-in gives its
reservation back and clears the account's count.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from bastion_auth.settings import Settings
from bastion_auth.store import LOCK_ACCOUNT_FAILS, LOCK_ACCOUNT_UNTIL, LOCK_IP_FAILS

__all__ = ["Attempt", "Lockout", "account_name"]

# KEYS: account attempts, account lock, IP attempts.
# ARGV: window, threshold, base delay, max delay, IP limit.
# Returns {refused (0 | 1 account locked | 2 IP blocked), account n, IP n, lock seconds set}.
_RESERVE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {1, 0, 0, 0} end
local ip = tonumber(redis.call('GET', KEYS[3]) or '0')
if ip >= tonumber(ARGV[5]) then return {2, 0, ip, 0} end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
ip = redis.call('INCR', KEYS[3])
if ip == 1 then redis.call('EXPIRE', KEYS[3], ARGV[1]) end
local delay = 0
local threshold = tonumber(ARGV[2])
if n >= threshold then
  delay = math.floor(math.min(tonumber(ARGV[3]) * 2 ^ (n - threshold), tonumber(ARGV[4])))
  redis.call('SET', KEYS[2], '1', 'EX', delay)
end
return {0, n, ip, delay}
"""

_SUCCEEDED = """
redis.call('DEL', KEYS[1], KEYS[2])
if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
return 1
"""


def account_name(username: str) -> str:
    """The one spelling of an account name for lockout counters and audit events, so
    `Admin` and ` admin` are the same account everywhere (user names are stored lower
    case)."""
    return username.strip().lower()[:64]


@dataclass(frozen=True)
class Attempt:
    refused: int  # 0: go ahead and check the password; 1: account locked; 2: IP blocked
    failures: int  # attempts on this account in the window, this one included
    ip_failures: int
    locked_seconds: int  # a lock this attempt set (it stands if the password is wrong)

    @property
    def allowed(self) -> bool:
        return self.refused == 0


class Lockout:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._s = settings
        self._reserve = redis.register_script(_RESERVE)
        self._succeeded = redis.register_script(_SUCCEEDED)

    @staticmethod
    def _keys(username: str, ip: str) -> list[str]:
        account = account_name(username)
        return [
            LOCK_ACCOUNT_FAILS.format(username=account),
            LOCK_ACCOUNT_UNTIL.format(username=account),
            LOCK_IP_FAILS.format(ip=ip),
        ]

    async def reserve(self, username: str, ip: str) -> Attempt:
        """Count this attempt before the password is checked, or refuse it."""
        refused, n, ip_n, delay = await self._reserve(
            keys=self._keys(username, ip),
            args=[
                self._s.lockout_window,
                self._s.lockout_threshold,
                self._s.lockout_base_delay,
                self._s.lockout_max_delay,
                self._s.ip_failure_limit,
            ],
        )
        return Attempt(int(refused), int(n), int(ip_n), int(delay))

    async def succeeded(self, username: str, ip: str) -> None:
        await self._succeeded(keys=self._keys(username, ip))
