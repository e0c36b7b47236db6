"""Tokens: authorization codes, RFC 9068 access tokens, rotating refresh tokens, families.

- Codes (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3): single use via one Lua step that deletes the
  code and leaves a marker; a replay finds the marker and revokes what the code produced.
- Access tokens: JWT signed by `KeyRing`; auth keeps a record of each (keyed by SHA-256)
  until it expires, so revocation and introspection need no JWT parsing here.
- Refresh tokens (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2): opaque, stored by SHA-256, rotated
  on every use. A rotated token used again revokes its whole family, except within the
  grace window where the same new pair is returned (kept encrypted for that window).
"""

from __future__ import annotations

import json
import math
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from bastion_auth.crypto import Sealer
from bastion_auth.keys import KeyRing
from bastion_auth.settings import Settings
from bastion_auth.store import (
    ACCESS_RECORD,
    CODE,
    CODE_USED,
    CODE_USED_TTL,
    FAMILY,
    FAMILY_JTIS,
    REFRESH,
    REFRESH_NEXT,
    USER_FAMILIES,
    digest,
)
from bastion_common.subjects import (
    KEYS_BEFORE,
    TOKENS_BEFORE,
    TokenRefusal,
    subject_key,
    token_refusal,
)
from bastion_common.tokens import denylist_key

__all__ = ["RefreshOutcome", "TokenService", "token_response"]

_REDEEM_CODE = """
local v = redis.call('GET', KEYS[1])
if v then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], cjson.decode(v)['family'], 'EX', ARGV[1])
  return {'ok', v}
end
local f = redis.call('GET', KEYS[2])
if f then return {'replayed', f} end
return {'none', ''}
"""

_ROTATE_REFRESH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'none', ''} end
local data = redis.call('HGET', KEYS[1], 'data')
if redis.call('HGET', KEYS[2], 'revoked') then return {'none', data} end
if state == 'active' then
  redis.call('HSET', KEYS[1], 'state', 'rotated', 'rotated_at', ARGV[1])
  return {'ok', data}
end
local at = tonumber(redis.call('HGET', KEYS[1], 'rotated_at'))
if tonumber(ARGV[1]) - at <= tonumber(ARGV[2]) then return {'grace', data} end
return {'reuse', data}
"""

# Sign out everywhere, for the tokens no family lists and for API keys: move each field
# named in ARGV[1..n-1] of the subject hash forward to ARGV[n] (never back).
_END_SUBJECT = """
local now = tonumber(ARGV[#ARGV])
for i = 1, #ARGV - 1 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]))
  if not old or old < now then redis.call('HSET', KEYS[1], ARGV[i], ARGV[#ARGV]) end
end
return 1
"""

RefreshStatus = Literal["ok", "grace", "reuse", "none"]


@dataclass(frozen=True)
class RefreshOutcome:
    status: RefreshStatus
    record: dict[str, Any]


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def token_response(access: str, claims: Mapping[str, Any], **extra: str) -> dict[str, Any]:
    """The RFC 6749 §5.1 answer for an access token, with what the grant adds (`extra`)."""
    return {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": claims["exp"] - claims["nbf"],
        "scope": claims["scope"],
        **extra,
    }


class TokenService:
    def __init__(self, redis: Redis, settings: Settings, keyring: KeyRing) -> None:
        self._redis = redis
        self._settings = settings
        self.keyring = keyring
        self._sealer = Sealer(settings.key_encryption_key.get_secret_value(), "refresh-grace")
        self._redeem = redis.register_script(_REDEEM_CODE)
        self._rotate = redis.register_script(_ROTATE_REFRESH)
        self._end_subject = redis.register_script(_END_SUBJECT)

    # -- authorization codes ------------------------------------------------------------

    async def create_code(self, grant: dict[str, Any]) -> str:
        code = secrets.token_urlsafe(32)
        grant = {**grant, "family": uuid.uuid4().hex}
        await self._redis.set(
            CODE.format(digest=digest(code)), json.dumps(grant), ex=self._settings.code_ttl
        )
        return code

    async def redeem_code(self, code: str) -> tuple[str, dict[str, Any] | str | None]:
        """("ok", grant) once; ("replayed", family id) afterwards; ("none", None)."""
        h = digest(code)
        # One step: take the code, leave a marker holding the family it will produce.
        status_b, value_b = await self._redeem(
            keys=[CODE.format(digest=h), CODE_USED.format(digest=h)], args=[CODE_USED_TTL]
        )
        status, value = status_b.decode(), value_b.decode()
        if status == "ok":
            return "ok", json.loads(value)
        if status == "replayed":
            return "replayed", value
        return "none", None

    # -- access and refresh tokens -------------------------------------------------------

    async def access_token(
        self,
        *,
        sub: str,
        client_id: str,
        resource: str,
        scopes: list[str],
        roles: list[str],
        ttl: int | None = None,
        family: str | None = None,
        pipe: Pipeline | None = None,
        act: dict[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Sign an access token and record it; with `pipe`, the writes join that pipeline
        (the caller executes it) so that a token response costs one Redis round trip.
        `act` (RFC 8693 §4.1) names who acts for `sub` (token exchange)."""
        issued = time.time()
        now = int(issued)
        ttl = ttl or self._settings.access_token_ttl
        claims: dict[str, Any] = {
            "iss": self._settings.issuer,
            "sub": sub,
            "aud": resource,
            "exp": now + ttl,
            # Milliseconds (RFC 7519 §2 allows fractions): a subject's cut-off
            # (`bastion_common.subjects`) must fall between tokens of the same second.
            "iat": math.floor(issued * 1000) / 1000,
            "nbf": now,
            "jti": uuid.uuid4().hex,
            "client_id": client_id,
            "scope": " ".join(scopes),
            "roles": roles,
        }
        if act is not None:
            claims["act"] = act
        token = await self.keyring.sign(claims)
        record = {**claims, "family": family, "token_type": "access_token"}
        own = pipe is None
        p = self._redis.pipeline(transaction=False) if pipe is None else pipe
        p.set(ACCESS_RECORD.format(digest=digest(token)), json.dumps(record), ex=ttl)
        if family:
            p.hset(FAMILY_JTIS.format(id=family), claims["jti"], claims["exp"])
            p.expire(FAMILY_JTIS.format(id=family), self._settings.refresh_token_ttl)
        if own:
            async with p:
                await p.execute()
        return token, claims

    async def issue_pair(
        self,
        *,
        sub: str,
        client_id: str,
        resource: str,
        scopes: list[str],
        roles: list[str],
        family: str,
        refresh_exp: int | None = None,
    ) -> dict[str, Any]:
        """A token response (RFC 6749 §5.1) with a refresh token of `family`."""
        refresh = secrets.token_urlsafe(32)
        now = int(time.time())
        exp = refresh_exp or now + self._settings.refresh_token_ttl
        data = {
            "sub": sub,
            "client_id": client_id,
            "resource": resource,
            "scope": " ".join(scopes),
            "roles": roles,
            "family": family,
            "exp": exp,
        }
        ttl = max(exp - now, 1)
        async with self._redis.pipeline(transaction=True) as pipe:
            access, claims = await self.access_token(
                sub=sub,
                client_id=client_id,
                resource=resource,
                scopes=scopes,
                roles=roles,
                family=family,
                pipe=pipe,
            )
            pipe.hset(
                REFRESH.format(digest=digest(refresh)),
                mapping={"state": "active", "data": json.dumps(data)},
            )
            pipe.expire(REFRESH.format(digest=digest(refresh)), ttl)
            pipe.hset(FAMILY.format(id=family), mapping={"sub": sub, "client_id": client_id})
            pipe.expire(FAMILY.format(id=family), self._settings.refresh_token_ttl)
            pipe.sadd(USER_FAMILIES.format(sub=sub), family)
            pipe.expire(USER_FAMILIES.format(sub=sub), self._settings.refresh_token_ttl)
            await pipe.execute()
        return token_response(access, claims, refresh_token=refresh)

    async def rotate_refresh(self, refresh: str, family: str) -> RefreshOutcome:
        """One atomic step: a revoked family answers "none"; an active token is marked
        rotated ("ok"); a rotated one is "grace" within the window, else "reuse"."""
        status_b, data_b = await self._rotate(
            keys=[REFRESH.format(digest=digest(refresh)), FAMILY.format(id=family)],
            args=[repr(time.time()), self._settings.refresh_grace_seconds],
        )
        status: RefreshStatus = status_b.decode()
        return RefreshOutcome(status, json.loads(data_b) if data_b else {})

    async def remember_rotation(self, refresh: str, response: dict[str, Any]) -> None:
        ttl = math.ceil(self._settings.refresh_grace_seconds) + 1
        sealed = self._sealer.seal(json.dumps(response).encode())
        await self._redis.set(REFRESH_NEXT.format(digest=digest(refresh)), sealed, ex=ttl)

    async def rotated_pair(self, refresh: str) -> dict[str, Any] | None:
        """The pair issued for `refresh` (grace window); waits briefly for a concurrent
        rotation that has not stored it yet."""
        key = REFRESH_NEXT.format(digest=digest(refresh))
        with anyio.move_on_after(2):
            while True:
                sealed = await self._redis.get(key)
                if sealed:
                    result: dict[str, Any] = json.loads(self._sealer.open(_b(sealed)))
                    return result
                await anyio.sleep(0.05)
        return None

    # -- revocation ------------------------------------------------------------------------

    async def family_revoked(self, family: str) -> bool:
        return bool(await self._redis.hget(FAMILY.format(id=family), "revoked"))

    async def revoke_family(self, family: str) -> int:
        """Revoke every refresh and access token of one grant; returns access tokens denied."""
        await self._redis.hset(FAMILY.format(id=family), "revoked", "1")
        jtis = await self._redis.hgetall(FAMILY_JTIS.format(id=family))
        await self._deny(jtis)
        return len(jtis)

    async def _deny(self, jtis: Mapping[Any, Any]) -> None:
        now = int(time.time())
        async with self._redis.pipeline(transaction=False) as pipe:
            for jti, exp in jtis.items():
                ttl = int(exp) - now + 1
                if ttl > 0:
                    pipe.set(denylist_key(_s(jti)), "1", ex=ttl)
            await pipe.execute()

    async def revoke_user(self, sub: str) -> int:
        """Sign out everywhere: first the subject's cut-off, which ends at once every access
        token issued so far (family or not, from auth or exchanged by keys) and every API
        key at the services that read it; then every grant of `sub` (refresh tokens)."""
        await self._end_subject(
            keys=[subject_key(sub)], args=[TOKENS_BEFORE, KEYS_BEFORE, repr(time.time())]
        )
        families = await self._redis.smembers(USER_FAMILIES.format(sub=sub))
        for family in families:
            await self.revoke_family(_s(family))
        return len(families)

    async def access_record(self, token: str) -> dict[str, Any] | None:
        if not token or len(token) > 8192:
            return None
        raw = await self._redis.get(ACCESS_RECORD.format(digest=digest(token)))
        return json.loads(raw) if raw else None

    async def refresh_record(self, token: str) -> dict[str, Any] | None:
        """The grant behind a refresh token (also once rotated: reuse must be detected)."""
        if not token or len(token) > 512:
            return None
        data, state = await self._redis.hmget(
            REFRESH.format(digest=digest(token)), ["data", "state"]
        )
        if not data:
            return None
        record: dict[str, Any] = json.loads(data)
        record["active"] = state == b"active"
        return record

    async def revoke_access(self, record: dict[str, Any]) -> None:
        await self._deny({str(record["jti"]): int(record["exp"])})

    async def is_denied(self, jti: str) -> bool:
        return bool(await self._redis.exists(denylist_key(jti)))

    async def refusal(self, record: dict[str, Any]) -> TokenRefusal | None:
        """Why the access token behind `record` is no longer good (denylisted, or its
        subject signed out, disabled or demoted since), else None."""
        return await token_refusal(
            self._redis, jti=record["jti"], subject=record["sub"], issued_at=record["iat"]
        )
