"""Redis key names of the tools service, each with its lifetime, and its Lua scripts.

The denylist key itself belongs to `bastion_common.tokens.denylist_key` (auth writes it).
"""

from __future__ import annotations

from typing import Final

from bastion_common.audit import PUBLISH_GRANT
from bastion_common.contracts import APIKEY_REVOKED_CHANNEL
from bastion_common.redisacl import CONNECTION, SCRIPTS, AclUser, Grant, Lifetime
from bastion_common.subjects import SUBJECT_PATTERN
from bastion_common.tokens import DENYLIST_PATTERN

__all__ = [
    "BUCKET_SCRIPT",
    "KEY_PATTERNS",
    "LIFETIMES",
    "REDIS_ACL",
    "WEATHER_TTL_SECONDS",
    "bucket_ttl_ms",
    "held_key",
    "ip_bucket_key",
    "pins_key",
    "principal_bucket_key",
    "seen_key",
    "weather_key",
]

WEATHER_TTL_SECONDS: Final = 7 * 24 * 3600
"""An observation older than a week is not 'the latest weather' any more."""


def principal_bucket_key(subject: str) -> str:
    """Token bucket of one principal; lives until it would be full again (`bucket_ttl_ms`)."""
    return f"rl:sub:{subject}"


def ip_bucket_key(ip: str) -> str:
    """Token bucket of failed/unauthenticated attempts from one client IP (same TTL rule)."""
    return f"rl:ip:{ip}"


def weather_key(city: str) -> str:
    """Latest observation for a city (JSON); TTL WEATHER_TTL_SECONDS."""
    return f"weather:obs:{city}"


def pins_key(upstream: str) -> str:
    """Hash: upstream tool name -> canonical JSON of its approved definition. No TTL."""
    return f"gw:pins:{upstream}"


def held_key(upstream: str) -> str:
    """Hash: upstream tool name -> canonical JSON of a definition awaiting approval. No TTL."""
    return f"gw:held:{upstream}"


def seen_key(upstream: str) -> str:
    """Set once the upstream was first listed: from then on, new tools are held. No TTL."""
    return f"gw:seen:{upstream}"


# every key above; tests check each name
KEY_PATTERNS: Final = ("rl:*", "weather:obs:*", "gw:pins:*", "gw:held:*", "gw:seen:*")
_PER_UPSTREAM = "one per upstream of the policy file, a field per tool it lists"
# How long each key lives (bastion_common.redisacl.Lifetime).
LIFETIMES: Final = (
    Lifetime("rl:*"),
    Lifetime("weather:obs:*"),
    Lifetime("gw:pins:*", _PER_UPSTREAM),
    Lifetime("gw:held:*", _PER_UPSTREAM),
    Lifetime("gw:seen:*", "one per upstream of the policy file"),
)

# tools' Redis user (bastion_common.redisacl): its buckets and observations; the denylist
# and the subject cut-offs read only (a compromised tools cannot un-revoke a token); the
# revocation channel to listen on; the audit stream, append only. TIME: the bucket
# script reads Redis' clock.
REDIS_ACL: Final = AclUser(
    "tools",
    commands=(
        *CONNECTION, *SCRIPTS, "subscribe", "unsubscribe", "time",
        "get", "set", "exists", "hget", "hmget", "hset", "pexpire", "hgetall", "hdel",
    ),
    grants=(
        *(Grant(p) for p in KEY_PATTERNS),
        Grant(DENYLIST_PATTERN, "R"), Grant(SUBJECT_PATTERN, "R"), PUBLISH_GRANT,
    ),
    channels=(APIKEY_REVOKED_CHANNEL,),
)  # fmt: skip


def bucket_ttl_ms(capacity: int, refill_per_second: float) -> int:
    """A bucket untouched for this long is full again, so it can be forgotten."""
    return int(capacity / refill_per_second * 1000) + 1000


# One round trip per call: refuse a revoked token (its jti denylisted, or its subject cut
# off after it was issued), else take `cost` tokens from the bucket.
# One invocation decides a batch of calls, each exactly as if it ran alone, in order: the
# limiter sends the calls that queued while the previous batch was in flight together.
# The clock is Redis' own (TIME), so replicas with skewed clocks share one bucket correctly.
# KEYS, one per call: the bucket key
# ARGV, eight per call: the denylist key of the token's jti ("" to skip: API keys have no
#   jti), the subject's hash (`bastion_common.subjects`; "" to skip), capacity, refill per
#   second, cost, ttl ms, the subject hash's cut-off field (tokens_before for a token,
#   keys_before for an API key), and when the credential was issued (epoch s): at or
#   before the cut-off it is revoked. The denylist and subject keys travel in ARGV
#   because tools may only read them (REDIS_ACL) and Redis counts every key in KEYS as
#   written; the EXISTS and HGET on them are still checked against tools' ACL.
# Returns one {status, remaining, retry_after} per call: status 1 allowed, 0 refused,
# -1 revoked, -2 the bucket key holds something else (that call fails closed; the others
# in the batch are decided as usual).
# Numbers are stored with string.format, never tostring: Lua's tostring keeps 14
# significant digits, which rounds the timestamp to 100 us, and decisions closer together
# than that would each be credited refill that never happened.
BUCKET_SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local function decide(deny, subject, bucket, capacity, rate, cost, ttl, field, issued)
  if deny ~= '' and redis.call('EXISTS', deny) == 1 then
    return {-1, '0', '0'}
  end
  if subject ~= '' then
    local cut = tonumber(redis.call('HGET', subject, field))
    if cut and tonumber(issued) <= cut then
      return {-1, '0', '0'}
    end
  end
  local state = redis.pcall('HMGET', bucket, 'tokens', 'ts')
  if state.err then
    return {-2, '0', '0'}
  end
  local tokens = tonumber(state[1])
  local ts = tonumber(state[2])
  if tokens == nil or ts == nil then
    tokens = capacity
    ts = now
  end
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(capacity, tokens + elapsed * rate)
  local status = 0
  local retry = 0
  if tokens >= cost then
    tokens = tokens - cost
    status = 1
  else
    retry = (cost - tokens) / rate
  end
  redis.call('HSET', bucket, 'tokens', string.format('%.17g', tokens),
    'ts', string.format('%.6f', now))
  redis.call('PEXPIRE', bucket, ttl)
  return {status, string.format('%.17g', tokens), string.format('%.17g', retry)}
end

local out = {}
for i = 1, #KEYS do
  local a = 8 * (i - 1)
  out[i] = decide(ARGV[a + 1], ARGV[a + 2], KEYS[i], tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), ARGV[a + 6], ARGV[a + 7], ARGV[a + 8])
end
return out
"""
