"""Access-token validation: the only module that calls `jwt.decode` (ruff TID251).

Resource servers validate tokens locally, never by asking the issuer per request:

- the issuer must be one of the configured `TrustedIssuer`s (exact string match);
- the algorithm is pinned per issuer: ES256 against that issuer's JWKS, or HS256 with a
  shared secret when so configured; `none`, and HS256 presented to a JWKS issuer
  (key confusion), are refused (RFC 8725 §3.1, §3.2);
- `typ` must be `at+jwt` (RFC 9068 §2.1, §4), `aud` must be exactly this resource
  (RFC 8707; one audience, not a list of several), `exp`/`nbf`/`iat` are checked with at
  most 30 s of leeway, and `sub`, `jti`, `iss` must be present;
- JWKS are fetched without blocking the event loop, cached, and refetched on an unknown
  `kid` at most once per `min_refetch_interval` per issuer (no refetch storm); when the
  issuer cannot be reached the keys already cached keep working; with no cached key the
  token is refused (fail closed);
- a token's signature is verified once: the resulting `Principal` is cached under the
  token's SHA-256 until the token expires.

Revocation is not checked here: the denylist lives in Redis and resource servers read it
together with their other per-request state (`denylist_key`). `is_revoked` is the plain
one-call form for services that have no other per-request Redis work.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import jwt
from jwt import PyJWK
from pydantic import SecretStr
from redis.asyncio import Redis

from bastion_common.errors import ServiceError
from bastion_common.logging import get_logger, request_id_headers
from bastion_common.permissions import parse_scope
from bastion_common.redisacl import Lifetime

__all__ = [
    "ID_JAG_TYP",
    "DENYLIST_LIFETIME",
    "DENYLIST_PATTERN",
    "MAX_LEEWAY_SECONDS",
    "AssertionValidator",
    "IdTokenValidator",
    "Principal",
    "TokenError",
    "TokenValidator",
    "TrustedIssuer",
    "denylist_key",
    "is_revoked",
    "token_fingerprint",
]

MAX_LEEWAY_SECONDS = 30
DENYLIST_PREFIX = "revoked:jti:"
DENYLIST_PATTERN = f"{DENYLIST_PREFIX}*"  # Redis ACL: auth and keys write it, others read
DENYLIST_LIFETIME = Lifetime(DENYLIST_PATTERN)  # an entry lives until its token would expire
ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "ES384", "RS256", "PS256", "EdDSA"})
log = get_logger(__name__)


class TokenError(ServiceError):
    """The token cannot be accepted (401 invalid_token, RFC 6750 §3.1). `description`
    is safe to show the caller."""

    def __init__(self, description: str) -> None:
        super().__init__(401, "invalid_token", description)

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class TrustedIssuer:
    """An issuer whose tokens this resource accepts, and how to check its signatures."""

    issuer: str
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = ("ES256",)
    shared_secret: SecretStr | None = None

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise ValueError(f"{self.issuer}: at least one algorithm must be allowed")
        if "none" in {a.lower() for a in self.algorithms}:
            raise ValueError("alg 'none' can never be allowed")
        symmetric = {a for a in self.algorithms if a.startswith("HS")}
        if symmetric and self.shared_secret is None:
            raise ValueError(f"{self.issuer}: HS algorithms need a shared secret")
        if symmetric and set(self.algorithms) - symmetric:
            # Mixing HS with public-key algorithms is the key-confusion setup.
            raise ValueError(f"{self.issuer}: do not mix HS and public-key algorithms")
        if not symmetric and self.jwks_url is None:
            raise ValueError(f"{self.issuer}: public-key algorithms need a jwks_url")


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


class _JWKS:
    """Keys of one issuer, fetched lazily, refetched on unknown kid at a bounded rate."""

    def __init__(self, issuer: TrustedIssuer, client: httpx2.AsyncClient, interval: float) -> None:
        self._issuer = issuer
        self._client = client
        self._interval = interval
        self._keys: dict[str, PyJWK] = {}
        self._last_fetch = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str, alg: str) -> PyJWK:
        found = self._keys.get(kid)
        if found is None:
            async with self._lock:
                found = self._keys.get(kid)
                if found is None and time.monotonic() - self._last_fetch >= self._interval:
                    await self._refresh()
                    found = self._keys.get(kid)
        if found is None:
            raise TokenError("token signed by an unknown key")
        if found.algorithm_name != alg:
            raise TokenError("token algorithm does not match its key")
        return found

    async def refresh(self) -> None:
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        self._last_fetch = time.monotonic()
        url = self._issuer.jwks_url
        assert url is not None  # noqa: S101 - TrustedIssuer guarantees it for JWKS issuers
        try:
            response = await self._client.get(url, headers=request_id_headers(), timeout=3.0)
            response.raise_for_status()
            document = response.json()
        except (httpx2.HTTPError, json.JSONDecodeError, ValueError) as exc:
            # Keep the keys we have: an unreachable issuer must not break valid tokens.
            log.warning("jwks.fetch_failed", issuer=self._issuer.issuer, error=type(exc).__name__)
            return
        keys: dict[str, PyJWK] = {}
        for jwk in document.get("keys", []) if isinstance(document, dict) else []:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            alg = jwk.get("alg") or _implied_alg(jwk, self._issuer.algorithms)
            if not kid or alg not in self._issuer.algorithms or jwk.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = PyJWK(jwk, algorithm=alg)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                log.warning("jwks.key_unusable", issuer=self._issuer.issuer, kid=kid)
        if keys:
            self._keys = keys
            log.info("jwks.refreshed", issuer=self._issuer.issuer, keys=len(keys))


def _implied_alg(jwk: Mapping[str, Any], allowed: Sequence[str]) -> str | None:
    """The algorithm of a JWK that does not name one (Entra ID, some Okta keys): the
    one allowed algorithm its key type can serve, or None when that is ambiguous."""
    family = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}.get(str(jwk.get("kty")))
    if family is None:
        return None
    matches = [a for a in allowed if a.startswith(family)]
    return matches[0] if len(matches) == 1 else None


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
            i.issuer: _JWKS(i, self._client, min_refetch_interval)
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
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        typ = str(header.get("typ", "")).lower()
        if typ not in ("at+jwt", "application/at+jwt"):
            raise TokenError("not an access token (typ must be at+jwt)")
        issuer = self._issuers.get(str(unverified.get("iss", "")))
        if issuer is None:
            raise TokenError("token issuer is not trusted")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise TokenError("token algorithm is not allowed for its issuer")
        key: Any
        if alg.startswith("HS"):
            assert issuer.shared_secret is not None  # noqa: S101 - checked by TrustedIssuer
            key = issuer.shared_secret.get_secret_value()
        else:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise TokenError("token has no key id")
            key = (await self._jwks[issuer.issuer].key(kid, alg)).key
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=issuer.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise TokenError("token is not meant for this resource") from None
        except jwt.PyJWTError:
            raise TokenError("token signature or claims are invalid") from None
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


_AT_HASH = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


class IdTokenValidator:
    """OpenID Connect ID tokens of one provider, for one client (OIDC Core §3.1.3.7).

    The signature is checked against the provider's JWKS with the algorithm pinned to
    what the operator allows (never HS*, never none); then `iss` exactly, `aud` holding
    this client (with several audiences `azp` must be this client), `azp` when present,
    `exp`/`iat` with bounded leeway, `nonce` when the sign-in sent one, and `at_hash`
    when present against the access token it came with."""

    def __init__(
        self,
        issuer: TrustedIssuer,
        client_id: str,
        *,
        http_client: httpx2.AsyncClient,
        leeway: float = MAX_LEEWAY_SECONDS,
        min_refetch_interval: float = 5.0,
    ) -> None:
        if issuer.jwks_url is None or any(a.startswith("HS") for a in issuer.algorithms):
            raise ValueError(f"{issuer.issuer}: ID tokens are checked against a JWKS only")
        self._issuer = issuer
        self._client_id = client_id
        self._leeway = min(leeway, MAX_LEEWAY_SECONDS)
        self._jwks = _JWKS(issuer, http_client, min_refetch_interval)

    async def validate(
        self, token: str, *, nonce: str | None, access_token: str | None = None
    ) -> dict[str, Any]:
        """The verified claims, or TokenError (safe to show; never anything else)."""
        header = _header(token, "ID token", 16384)
        if str(header.get("typ", "JWT")).lower() in ("at+jwt", "application/at+jwt"):
            raise TokenError("an access token is not an ID token")
        alg = header.get("alg")
        claims = await _verify_signed(
            token, header, self._jwks, self._issuer, self._client_id, self._leeway, "ID token",
            require=["exp", "iat", "iss", "aud", "sub"], audience_name="client",
        )  # fmt: skip
        aud, azp = claims["aud"], claims.get("azp")
        if isinstance(aud, list) and len(aud) > 1 and azp is None:
            raise TokenError("ID token has several audiences and no azp")
        if azp is not None and azp != self._client_id:
            raise TokenError("ID token was issued to another client (azp)")
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenError("ID token nonce does not match this sign-in")
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token is not None:
            digest = _AT_HASH.get(str(alg)[-3:], hashlib.sha512)(access_token.encode()).digest()
            expected = base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=")
            if not hmac.compare_digest(expected.decode(), str(at_hash)):
                raise TokenError("ID token at_hash does not match the access token")
        return claims


def _header(token: str, label: str, max_length: int) -> dict[str, Any]:
    if not token or len(token) > max_length:
        raise TokenError(f"malformed {label}")
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError(f"malformed {label}") from None


async def _verify_signed(
    token: str,
    header: Mapping[str, Any],
    jwks: _JWKS,
    issuer: TrustedIssuer,
    audience: str,
    leeway: float,
    label: str,
    *,
    require: list[str],
    audience_name: str,
) -> dict[str, Any]:
    """Signature (algorithm pinned to the issuer's, key by `kid` from its JWKS), `iss`
    exactly, `aud` holding `audience`, the required claims, `exp`/`nbf`/`iat` with leeway."""
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in issuer.algorithms:
        raise TokenError(f"{label} algorithm is not allowed for this issuer")
    if not isinstance(kid, str) or not kid:
        raise TokenError(f"{label} has no key id")
    key = await jwks.key(kid, alg)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=audience,
            issuer=issuer.issuer,
            leeway=leeway,
            options={"require": require},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError(f"{label} expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError(f"{label} issued in the future") from None
    except jwt.InvalidAudienceError:
        raise TokenError(f"{label} is not meant for this {audience_name}") from None
    except jwt.PyJWTError:
        raise TokenError(f"{label} signature or claims are invalid") from None
    if float(claims["iat"]) > time.time() + leeway:
        raise TokenError(f"{label} issued in the future")
    return claims


ID_JAG_TYP = "oauth-id-jag+jwt"


class AssertionValidator:
    """JWT authorization grants (RFC 7523 §3) of the form ID-JAG
    (draft-ietf-oauth-identity-assertion-authz-grant §3), from trusted issuers.

    `typ` must be `oauth-id-jag+jwt` (RFC 8725 §3.11: an ID token or access token of the
    same issuer is not a grant); `iss` one of the trusted issuers, signature against its
    JWKS with its pinned algorithms; `aud` exactly this authorization server's issuer
    (one value); `sub`, `jti`, `client_id`, `exp`, `iat` present; `exp` within
    `max_lifetime` of `iat` (RFC 7523 §3 item 5: not unreasonably far away). Single use
    by `jti` is the caller's (it owns the store)."""

    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        audience: str,
        *,
        http_client: httpx2.AsyncClient,
        max_lifetime: float = 300,
        leeway: float = MAX_LEEWAY_SECONDS,
        min_refetch_interval: float = 5.0,
    ) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        if any(i.jwks_url is None or i.shared_secret is not None for i in issuers):
            raise ValueError("assertions are checked against an issuer's JWKS only")
        self._jwks = {i.issuer: _JWKS(i, http_client, min_refetch_interval) for i in issuers}
        self._audience = audience
        self._max_lifetime = max_lifetime
        self._leeway = min(leeway, MAX_LEEWAY_SECONDS)

    async def validate(self, assertion: str) -> dict[str, Any]:
        """The verified claims, or TokenError (safe to show; never anything else)."""
        header = _header(assertion, "assertion", 16384)
        if str(header.get("typ", "")).lower() not in (ID_JAG_TYP, f"application/{ID_JAG_TYP}"):
            raise TokenError("assertion is not an ID-JAG (typ must be oauth-id-jag+jwt)")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenError("malformed assertion") from None
        issuer = self._issuers.get(str(unverified.get("iss", "")))
        if issuer is None:
            raise TokenError("assertion issuer is not trusted")
        claims = await _verify_signed(
            assertion, header, self._jwks[issuer.issuer], issuer, self._audience, self._leeway,
            "assertion", require=["exp", "iat", "iss", "aud", "sub", "jti", "client_id"],
            audience_name="authorization server",
        )  # fmt: skip
        if isinstance(claims["aud"], list) and claims["aud"] != [self._audience]:
            raise TokenError("assertion is not meant for this authorization server")
        if float(claims["exp"]) - float(claims["iat"]) > self._max_lifetime:
            raise TokenError("assertion lives too long")
        for name in ("sub", "jti", "client_id"):
            if not isinstance(claims[name], str) or not claims[name] or len(claims[name]) > 512:
                raise TokenError(f"assertion {name} is not a usable string")
        return claims
