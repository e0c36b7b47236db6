"""Checking a signed JWT (RFC 7515/7519) from a trusted issuer: the one place, with
`tokens` (access tokens) and `idtokens` (ID tokens, ID-JAG assertions) on top of it,
that calls `jwt.decode` (ruff TID251).

- the issuer must be one of the configured `TrustedIssuer`s (exact string match);
- the algorithm is pinned per issuer: public-key algorithms against that issuer's JWKS,
  or HS256 with a shared secret when so configured; `none`, and HS256 presented to a
  JWKS issuer (key confusion), are refused (RFC 8725 §3.1, §3.2);
- JWKS are fetched without blocking the event loop, cached, and refetched on an unknown
  `kid` at most once per `min_refetch_interval` per issuer (no refetch storm); when the
  issuer cannot be reached the keys already cached keep working; with no cached key the
  token is refused (fail closed);
- `exp`/`nbf` (and `iat` for ID tokens and assertions) are checked with at most 30 s of
  leeway; each kind of JWT names the claims it requires and how its refusals read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import jwt
from jwt import PyJWK
from pydantic import SecretStr

from bastion_common.errors import ServiceError
from bastion_common.logging import get_logger, request_id_headers

__all__ = [
    "ACCESS_TOKEN",
    "ASSERTION",
    "ID_TOKEN",
    "MAX_LEEWAY_SECONDS",
    "JwksCache",
    "JwtKind",
    "TokenError",
    "TrustedIssuer",
    "read_header",
    "unverified_issuer",
    "verify_signed",
]

MAX_LEEWAY_SECONDS = 30
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


class JwksCache:
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
            alg = jwk.get("alg") or implied_alg(jwk, self._issuer.algorithms)
            if not kid or alg not in self._issuer.algorithms or jwk.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = PyJWK(jwk, algorithm=alg)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                log.warning("jwks.key_unusable", issuer=self._issuer.issuer, kid=kid)
        if keys:
            self._keys = keys
            log.info("jwks.refreshed", issuer=self._issuer.issuer, keys=len(keys))


def implied_alg(jwk: Mapping[str, Any], allowed: Sequence[str]) -> str | None:
    """The algorithm of a JWK that does not name one (Entra ID, some Okta keys): the
    one allowed algorithm its key type can serve, or None when that is ambiguous."""
    family = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}.get(str(jwk.get("kty")))
    if family is None:
        return None
    matches = [a for a in allowed if a.startswith(family)]
    return matches[0] if len(matches) == 1 else None


@dataclass(frozen=True)
class JwtKind:
    """What kind of JWT a validator checks: how its refusals read, the claims it must
    have, and whether an `iat` in the future (beyond the leeway) is refused."""

    label: str
    audience_name: str
    require: tuple[str, ...]
    early: str  # the refusal of a token used before its nbf (or iat)
    check_iat: bool = True


ACCESS_TOKEN = JwtKind(
    "token", "resource", ("exp", "iat", "iss", "aud", "sub", "jti"), "not yet valid", False
)
ID_TOKEN = JwtKind(
    "ID token", "client", ("exp", "iat", "iss", "aud", "sub"), "issued in the future"
)
ASSERTION = JwtKind(
    "assertion", "authorization server", ("exp", "iat", "iss", "aud", "sub", "jti", "client_id"),
    "issued in the future",
)  # fmt: skip


def read_header(token: str, label: str, max_length: int) -> dict[str, Any]:
    if not token or len(token) > max_length:
        raise TokenError(f"malformed {label}")
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError(f"malformed {label}") from None


def unverified_issuer(token: str, label: str) -> str:
    """`iss` before the signature is checked: only to pick whose keys to check it with."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenError(f"malformed {label}") from None
    return str(unverified.get("iss", ""))


async def verify_signed(
    token: str,
    header: Mapping[str, Any],
    jwks: JwksCache | None,
    issuer: TrustedIssuer,
    audience: str,
    leeway: float,
    kind: JwtKind,
) -> dict[str, Any]:
    """Signature (algorithm pinned to the issuer's; the key by `kid` from its JWKS, or
    its shared secret for HS*), `iss` exactly, `aud` holding `audience`, the required
    claims, `exp`/`nbf` (and `iat` when the kind says) with leeway."""
    label = kind.label
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in issuer.algorithms:
        raise TokenError(f"{label} algorithm is not allowed for its issuer")
    key: Any
    if alg.startswith("HS"):
        assert issuer.shared_secret is not None  # noqa: S101 - checked by TrustedIssuer
        key = issuer.shared_secret.get_secret_value()
    else:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError(f"{label} has no key id")
        if jwks is None:  # TrustedIssuer requires a jwks_url for public-key algorithms
            raise TokenError(f"{label} issuer has no keys")
        key = (await jwks.key(kid, alg)).key
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            issuer=issuer.issuer,
            leeway=leeway,
            options={"require": list(kind.require)},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError(f"{label} expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError(f"{label} {kind.early}") from None
    except jwt.InvalidAudienceError:
        raise TokenError(f"{label} is not meant for this {kind.audience_name}") from None
    except jwt.PyJWTError:
        raise TokenError(f"{label} signature or claims are invalid") from None
    if kind.check_iat and float(claims["iat"]) > time.time() + leeway:
        raise TokenError(f"{label} {kind.early}")
    return claims
