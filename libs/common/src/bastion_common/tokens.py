"""Access-token validation (RFC 9068) for resource servers, on `bastion_common.jwtverify`.

Resource servers validate tokens locally, never by asking the issuer per request:

- the issuer, the algorithm pinned per issuer, the signature and the JWKS are
  `jwtverify`'s (exact issuer match; `none` and key confusion refused);
- `typ` must be `at+jwt` (RFC 9068 §2.1, §4), `aud` must be exactly this resource
  (RFC 8707; one audience, not a list of several), `exp`/`nbf`/`iat` are checked with at
  most 30 s of leeway, and `sub`, `jti`, `iss` must be present;
- a token's signature is verified once: the resulting `Principal` is cached under the
  token's SHA-256 until the token expires.

Revocation is not checked here: the denylist lives in Redis and resource servers read it
together with their other per-request state (`denylist_key`). `is_revoked` is the plain
one-call form for services that have no other per-request Redis work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
from redis.asyncio import Redis

from bastion_common.jwtverify import (
    ACCESS_TOKEN,
    MAX_LEEWAY_SECONDS,
    JwksCache,
    TokenError,
    TrustedIssuer,
    read_header,
    unverified_issuer,
    verify_signed,
)
from bastion_common.permissions import parse_scope
from bastion_common.redisacl import Lifetime

__all__ = [
    "DENYLIST_LIFETIME",
    "DENYLIST_PATTERN",
    "MAX_LEEWAY_SECONDS",
    "Principal",
    "TokenError",
    "TokenValidator",
    "TrustedIssuer",
    "denylist_key",
    "is_revoked",
    "token_fingerprint",
]

DENYLIST_PREFIX = "revoked:jti:"
DENYLIST_PATTERN = f"{DENYLIST_PREFIX}*"  # Redis ACL: auth and keys write it, others read
DENYLIST_LIFETIME = Lifetime(DENYLIST_PATTERN)  # an entry lives until its token would expire


@dataclass(frozen=True)
class Principal:
    """Who a validated token speaks for, and what it may do."""

    subject: str
    issuer: str
    audience: str
    scopes: frozenset[str]
    token_id: str
    expires_at: float
    not_before: float
    client_id: str | None = None
    roles: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # SHA-256 of the presented token (`token_fingerprint`), so callers need not hash again.
    fingerprint: str = field(default="", compare=False, repr=False)

    def has(self, permission: str) -> bool:
        return permission in self.scopes


def token_fingerprint(token: str) -> str:
    """SHA-256 of a token: how caches and logs refer to it without holding it."""
    return hashlib.sha256(token.encode()).hexdigest()


def denylist_key(jti: str) -> str:
    """Redis key marking a revoked access token (set by auth until the token's exp)."""
    return f"{DENYLIST_PREFIX}{jti}"


async def is_revoked(redis: Redis, jti: str) -> bool:
    """True when `jti` is on the denylist. Raises when Redis cannot answer (fail closed)."""
    return bool(await redis.exists(denylist_key(jti)))


class TokenValidator:
    """Validates access tokens for one resource (its canonical URI is the audience)."""

    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        audience: str,
        *,
        http_client: httpx2.AsyncClient | None = None,
        leeway: float = MAX_LEEWAY_SECONDS,
        min_refetch_interval: float = 5.0,
        cache_size: int = 10_000,
    ) -> None:
        if not issuers:
            raise ValueError("at least one trusted issuer is required")
        self._issuers = {i.issuer: i for i in issuers}
        self._audience = audience
        self._leeway = min(leeway, MAX_LEEWAY_SECONDS)
        self._client = http_client or httpx2.AsyncClient()
        self._owns_client = http_client is None
        self._jwks = {
            i.issuer: JwksCache(i, self._client, min_refetch_interval)
            for i in issuers
            if i.jwks_url is not None
        }
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size

    @property
    def audience(self) -> str:
        return self._audience

    async def prefetch(self) -> None:
        """Load every issuer's keys now (start-up); failures are logged, not raised."""
        await asyncio.gather(*(jwks.refresh() for jwks in self._jwks.values()))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def validate(self, token: str) -> Principal:
        """The token's principal, or TokenError. Never raises anything else for bad input."""
        if not token or len(token) > 8192:
            raise TokenError("malformed token")
        fingerprint = token_fingerprint(token)
        cached = self._cache.get(fingerprint)
        if cached is not None:
            if time.time() - self._leeway >= cached.expires_at:
                del self._cache[fingerprint]
            self._check_times(cached)
            self._cache.move_to_end(fingerprint)
            return cached
        principal = dataclasses.replace(await self._verify(token), fingerprint=fingerprint)
        self._check_times(principal)
        self._cache[fingerprint] = principal
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    def _check_times(self, principal: Principal) -> None:
        now = time.time()
        if now - self._leeway >= principal.expires_at:
            raise TokenError("token expired")
        if now + self._leeway < principal.not_before:
            raise TokenError("token not yet valid")

    async def _verify(self, token: str) -> Principal:
        header = read_header(token, "token", 8192)
        typ = str(header.get("typ", "")).lower()
        if typ not in ("at+jwt", "application/at+jwt"):
            raise TokenError("not an access token (typ must be at+jwt)")
        issuer = self._issuers.get(unverified_issuer(token, "token"))
        if issuer is None:
            raise TokenError("token issuer is not trusted")
        claims = await verify_signed(
            token, header, self._jwks.get(issuer.issuer), issuer, self._audience, self._leeway,
            ACCESS_TOKEN,
        )  # fmt: skip
        aud = claims["aud"]
        if isinstance(aud, list) and aud != [self._audience]:
            raise TokenError("token is not meant for this resource")
        return _principal(claims)


def _principal(claims: Mapping[str, Any]) -> Principal:
    roles = claims.get("roles", [])
    client_id = claims.get("client_id")
    return Principal(
        subject=str(claims["sub"]),
        issuer=str(claims["iss"]),
        audience=claims["aud"] if isinstance(claims["aud"], str) else claims["aud"][0],
        scopes=parse_scope(claims.get("scope") if isinstance(claims.get("scope"), str) else None),
        token_id=str(claims["jti"]),
        expires_at=float(claims["exp"]),
        not_before=float(claims.get("nbf", claims["iat"])),
        client_id=str(client_id) if client_id is not None else None,
        roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
        claims=dict(claims),
    )
