"""Redis key names of the keys service, each with its lifetime, and the scripts that
change them atomically.

Layout:
- `apikeys:rec:{key_id}` hash: the metadata of one key and the HMAC of its current (and,
  during a rotation overlap, previous) secret. Kept until `RECORD_RETENTION_SECONDS` after
  the key expires, so owners still see expired and revoked keys for a while.
- `apikeys:idx:{hmac}` string -> key_id: the lookup from a presented key. Expires with
  the key; kept after revocation and for the previous secret after a rotation (the record
  decides), so late presentations are attributed; a second rotation deletes the oldest.
- `apikeys:owner:{owner}` set of key ids (cleaned of vanished records when listed).
- `apikeys:jtis:{key_id}` sorted set jti -> exp of tokens exchanged from the key, so a
  revocation can put the live ones on the shared denylist.
- `apikeys:fail:{ip}` counter of failed presentations in the current window.
- `keys:signing_key` the encrypted ES256 signing key (no TTL).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis

from bastion_common.audit import PUBLISH_GRANT
from bastion_common.contracts import APIKEY_REVOKED_CHANNEL
from bastion_common.redisacl import CONNECTION, SCRIPTS, TRANSACTIONS, AclUser, Grant, Lifetime
from bastion_common.subjects import SUBJECT_PATTERN
from bastion_common.tokens import DENYLIST_PATTERN, denylist_key

__all__ = [
    "APIKEY_REVOKED_CHANNEL",
    "KEY_PATTERN",
    "LIFETIMES",
    "RECORD_RETENTION_SECONDS",
    "REDIS_ACL",
    "SIGNING_KEY",
    "CreateResult",
    "KeyRecord",
    "KeyStore",
    "fail_key",
    "index_key",
    "jtis_key",
    "owner_key",
    "record_key",
]

RECORD_RETENTION_SECONDS: Final = 30 * 24 * 3600
SIGNING_KEY: Final = "keys:signing_key"
_RECORD_PREFIX: Final = "apikeys:rec:"
_INDEX_PREFIX: Final = "apikeys:idx:"
KEY_PATTERN: Final = "apikeys:*"  # every key below but SIGNING_KEY; tests check each name
# How long each key lives (bastion_common.redisacl.Lifetime): every apikeys: key expires
# (the functions below say when); the signing key is one key.
LIFETIMES: Final = (
    *(Lifetime(f"apikeys:{kind}:*") for kind in ("rec", "idx", "owner", "jtis", "fail")),
    Lifetime(SIGNING_KEY, "one key"),
)

# keys' Redis user (bastion_common.redisacl): its own keys, the denylist (it revokes the
# tokens it exchanged), the subject cut-offs (read only: auth writes them), the
# revocation channel (publish only) and the audit stream, append only.
REDIS_ACL: Final = AclUser(
    "keys",
    commands=(
        *CONNECTION, *SCRIPTS, *TRANSACTIONS, "publish",
        "get", "set", "del", "exists", "expire", "expireat", "ttl", "incr",
        "hget", "hmget", "hgetall", "hset", "hincrby", "sadd", "srem", "scard", "smembers",
        "zadd", "zrangebyscore",
    ),
    grants=(
        Grant(KEY_PATTERN), Grant(SIGNING_KEY), Grant(DENYLIST_PATTERN),
        Grant(SUBJECT_PATTERN, "R"), PUBLISH_GRANT,
    ),
    channels=(APIKEY_REVOKED_CHANNEL,),
)  # fmt: skip


def record_key(key_id: str) -> str:
    """Metadata hash; EXPIREAT = expires_at + RECORD_RETENTION_SECONDS."""
    return f"{_RECORD_PREFIX}{key_id}"


def index_key(hmac_hex: str) -> str:
    """HMAC of a key's secret -> key id; EXPIREAT = the key's expiry."""
    return f"{_INDEX_PREFIX}{hmac_hex}"


def owner_key(owner: str) -> str:
    """Key ids of one owner; EXPIRE refreshed to RECORD_RETENTION past the newest expiry."""
    return f"apikeys:owner:{owner}"


def jtis_key(key_id: str) -> str:
    """Exchanged token ids of a key (score = exp); EXPIREAT = the newest token's exp."""
    return f"apikeys:jtis:{key_id}"


def fail_key(ip: str) -> str:
    """Failed presentations from one IP; TTL = the rate-limit window (fixed window)."""
    return f"apikeys:fail:{ip}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    owner: str
    name: str
    permissions: tuple[str, ...]
    roles: tuple[str, ...]
    created_at: float
    expires_at: float
    active: bool
    hash: str
    prev_hash: str | None = None
    prev_until: float | None = None
    revoked_at: float | None = None
    rotated_at: float | None = None
    last_used: float | None = None
    use_count: int = 0

    @classmethod
    def from_redis(cls, key_id: str, raw: Mapping[Any, Any]) -> KeyRecord:
        f = {_text(k): _text(v) for k, v in raw.items()}

        def opt(name: str) -> float | None:
            return float(f[name]) if f.get(name) else None

        return cls(
            key_id=key_id,
            owner=f["owner"],
            name=f["name"],
            permissions=tuple(f["permissions"].split()),
            roles=tuple(f["roles"].split()),
            created_at=float(f["created_at"]),
            expires_at=float(f["expires_at"]),
            active=f["active"] == "1",
            hash=f["hash"],
            prev_hash=f.get("prev_hash") or None,
            prev_until=opt("prev_until"),
            revoked_at=opt("revoked_at"),
            rotated_at=opt("rotated_at"),
            last_used=opt("last_used"),
            use_count=int(f.get("use_count", "0")),
        )


# KEYS: record, index, owner set. ARGV: max keys per owner, record prefix, key id,
# expires_at (int seconds), retention, then field/value pairs.
# Returns 1 created, 0 owner at the cap, -1 id collision.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('EXISTS', ARGV[2] .. id) == 0 then redis.call('SREM', KEYS[3], id) end
end
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[1]) then return 0 end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local until_ = tonumber(ARGV[4])
redis.call('EXPIREAT', KEYS[1], until_ + tonumber(ARGV[5]))
redis.call('SET', KEYS[2], ARGV[3], 'EXAT', until_)
redis.call('SADD', KEYS[3], ARGV[3])
if redis.call('TTL', KEYS[3]) == -1 then
  redis.call('EXPIREAT', KEYS[3], until_ + tonumber(ARGV[5]))
else
  redis.call('EXPIREAT', KEYS[3], until_ + tonumber(ARGV[5]), 'GT')
end
return 1
"""

# One round trip for a presentation: the failure count of the IP, then the record the
# key's HMAC points at. KEYS: fail counter, index. ARGV: record prefix.
# Returns {fails, key_id or false, flat record or false}.
_LOOKUP = """
local fails = tonumber(redis.call('GET', KEYS[1]) or '0')
local id = redis.call('GET', KEYS[2])
if not id then return {fails, false, false} end
return {fails, id, redis.call('HGETALL', ARGV[1] .. id)}
"""

# KEYS: fail counter. ARGV: window seconds. Fixed window: the first failure starts it.
_FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
return n
"""

# Replace a key's secret, keeping the old one valid for `overlap` seconds.
# KEYS: record, new index. ARGV: now, new hmac, overlap, index prefix, key id.
# Returns {status, prev_until}: 1 rotated, 0 not active (revoked / expired / missing).
_ROTATE = """
if redis.call('HGET', KEYS[1], 'active') ~= '1' then return {0, '0'} end
local now = tonumber(ARGV[1])
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
if expires <= now then return {0, '0'} end
local old_prev = redis.call('HGET', KEYS[1], 'prev_hash')
if old_prev and old_prev ~= '' then redis.call('DEL', ARGV[4] .. old_prev) end
local current = redis.call('HGET', KEYS[1], 'hash')
local overlap = tonumber(ARGV[3])
local prev_until = math.min(now + overlap, expires)
if overlap <= 0 then prev_until = now end
-- The old secret's index entry stays until the key expires (its record says until when
-- it is good), so a late use is still attributed to the key in the audit record.
redis.call('HSET', KEYS[1], 'prev_hash', current, 'prev_until', string.format('%.6f', prev_until))
redis.call('HSET', KEYS[1], 'hash', ARGV[2], 'rotated_at', ARGV[1])
redis.call('SET', KEYS[2], ARGV[5], 'EXAT', math.ceil(expires))
return {1, string.format('%.6f', prev_until)}
"""

# Revoke: mark inactive, denylist the live exchanged tokens and announce the key id. The
# index entries stay (until the key's expiry) so that later presentations of the revoked
# key are refused *as revoked*, with its id in the audit record.
# KEYS: record, jtis. ARGV: now, index prefix (unused), denylist prefix,
# channel, key id. Returns 1 revoked, 0 already inactive or missing.
_REVOKE = """
if redis.call('HGET', KEYS[1], 'active') ~= '1' then return 0 end
local now = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'active', '0', 'revoked_at', ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  local ttl = math.ceil(tonumber(live[i + 1]) - now)
  if ttl > 0 then redis.call('SET', ARGV[3] .. live[i], '1', 'EX', ttl) end
end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""


# Note an exchanged token's jti; the set lives as long as its newest token.
# KEYS: jtis. ARGV: jti, exp. One command on the exchange path instead of a MULTI.
_REMEMBER = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
else
  redis.call('EXPIREAT', KEYS[1], ARGV[2], 'GT')
end
return 1
"""


@dataclass(frozen=True, slots=True)
class CreateResult:
    created: bool
    at_cap: bool


class KeyStore:
    """Every Redis read and write of API keys goes through here."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._create = redis.register_script(_CREATE)
        self._lookup = redis.register_script(_LOOKUP)
        self._fail = redis.register_script(_FAIL)
        self._rotate = redis.register_script(_ROTATE)
        self._revoke = redis.register_script(_REVOKE)
        self._remember = redis.register_script(_REMEMBER)

    @property
    def redis(self) -> Redis:
        return self._redis

    async def create(self, record: KeyRecord, *, max_per_owner: int) -> CreateResult:
        fields: list[str] = [
            "owner", record.owner, "name", record.name,
            "permissions", " ".join(record.permissions), "roles", " ".join(record.roles),
            "created_at", repr(record.created_at), "expires_at", repr(record.expires_at),
            "active", "1", "hash", record.hash, "use_count", "0",
        ]  # fmt: skip
        status = await self._create(
            keys=[record_key(record.key_id), index_key(record.hash), owner_key(record.owner)],
            args=[
                max_per_owner,
                _RECORD_PREFIX,
                record.key_id,
                int(record.expires_at),
                RECORD_RETENTION_SECONDS,
                *fields,
            ],
        )
        return CreateResult(created=status == 1, at_cap=status == 0)

    async def get(self, key_id: str) -> KeyRecord | None:
        raw = await self._redis.hgetall(record_key(key_id))
        return KeyRecord.from_redis(key_id, raw) if raw else None

    async def list_owner(self, owner: str) -> list[KeyRecord]:
        ids = sorted(_text(m) for m in await self._redis.smembers(owner_key(owner)))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(record_key(key_id))
            raws: list[dict[bytes, bytes]] = await pipe.execute()
        records = [KeyRecord.from_redis(i, r) for i, r in zip(ids, raws, strict=True) if r]
        return sorted(records, key=lambda r: r.created_at)

    async def lookup(self, hmac_hex: str, ip: str) -> tuple[int, KeyRecord | None]:
        """(failures of `ip` in the window, the record the HMAC points at)."""
        fails, key_id, raw = await self._lookup(
            keys=[fail_key(ip), index_key(hmac_hex)], args=[_RECORD_PREFIX]
        )
        if not key_id or not raw:
            return int(fails), None
        pairs = dict(zip(raw[::2], raw[1::2], strict=True))
        return int(fails), KeyRecord.from_redis(_text(key_id), pairs)

    async def failures(self, ip: str) -> int:
        return int(await self._redis.get(fail_key(ip)) or 0)

    async def count_failure(self, ip: str, window_seconds: int) -> int:
        return int(await self._fail(keys=[fail_key(ip)], args=[window_seconds]))

    async def rotate(
        self, key_id: str, new_hash: str, *, now: float, overlap_seconds: int
    ) -> float | None:
        """When the old secret stops working, or None when the key is not active."""
        status, prev_until = await self._rotate(
            keys=[record_key(key_id), index_key(new_hash)],
            args=[repr(now), new_hash, overlap_seconds, _INDEX_PREFIX, key_id],
        )
        return float(prev_until) if status == 1 else None

    async def revoke(self, key_id: str, *, now: float) -> bool:
        status = await self._revoke(
            keys=[record_key(key_id), jtis_key(key_id)],
            args=[repr(now), _INDEX_PREFIX, denylist_key(""), APIKEY_REVOKED_CHANNEL, key_id],
        )
        return bool(status == 1)

    async def announce_revoked(self, key_id: str) -> None:
        """Tell every cache (the tools server's) to drop what it knows about `key_id`."""
        await self._redis.publish(APIKEY_REVOKED_CHANNEL, key_id)

    async def remember_token(self, key_id: str, jti: str, exp: int) -> None:
        """Note an exchanged token so that revoking the key can denylist it."""
        await self._remember(keys=[jtis_key(key_id)], args=[jti, exp])

    async def add_usage(self, usage: dict[str, tuple[int, float]]) -> None:
        """Fold aggregated use counts and last-used times into the records."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id, (count, last_used) in usage.items():
                # Only touch records that still exist: never resurrect an expired one.
                pipe.eval(
                    "if redis.call('EXISTS', KEYS[1]) == 1 then "
                    "redis.call('HINCRBY', KEYS[1], 'use_count', ARGV[1]); "
                    "local old = tonumber(redis.call('HGET', KEYS[1], 'last_used') or '0'); "
                    "if tonumber(ARGV[2]) > old then "
                    "redis.call('HSET', KEYS[1], 'last_used', ARGV[2]) end end return 1",
                    1,
                    record_key(key_id),
                    count,
                    repr(last_used),
                )
            await pipe.execute()
