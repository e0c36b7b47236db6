"""ID tokens (OpenID Connect) and ID-JAG assertions (RFC 7523 grants): the JWTs auth
receives from identity providers, checked by `bastion_common.jwtverify`."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import httpx2

from bastion_common.jwtverify import (
    ASSERTION,
    ID_TOKEN,
    MAX_LEEWAY_SECONDS,
    JwksCache,
    TokenError,
    TrustedIssuer,
    read_header,
    unverified_issuer,
    verify_signed,
)

__all__ = ["ID_JAG_TYP", "AssertionValidator", "IdTokenValidator"]


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
        self._jwks = JwksCache(issuer, http_client, min_refetch_interval)

    async def validate(
        self, token: str, *, nonce: str | None, access_token: str | None = None
    ) -> dict[str, Any]:
        """The verified claims, or TokenError (safe to show; never anything else)."""
        header = read_header(token, "ID token", 16384)
        if str(header.get("typ", "JWT")).lower() in ("at+jwt", "application/at+jwt"):
            raise TokenError("an access token is not an ID token")
        alg = header.get("alg")
        claims = await verify_signed(
            token, header, self._jwks, self._issuer, self._client_id, self._leeway, ID_TOKEN
        )
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
        self._jwks = {i.issuer: JwksCache(i, http_client, min_refetch_interval) for i in issuers}
        self._audience = audience
        self._max_lifetime = max_lifetime
        self._leeway = min(leeway, MAX_LEEWAY_SECONDS)

    async def validate(self, assertion: str) -> dict[str, Any]:
        """The verified claims, or TokenError (safe to show; never anything else)."""
        header = read_header(assertion, "assertion", 16384)
        if str(header.get("typ", "")).lower() not in (ID_JAG_TYP, f"application/{ID_JAG_TYP}"):
            raise TokenError("assertion is not an ID-JAG (typ must be oauth-id-jag+jwt)")
        issuer = self._issuers.get(unverified_issuer(assertion, "assertion"))
        if issuer is None:
            raise TokenError("assertion issuer is not trusted")
        claims = await verify_signed(
            assertion, header, self._jwks[issuer.issuer], issuer, self._audience, self._leeway,
            ASSERTION,
        )  # fmt: skip
        if isinstance(claims["aud"], list) and claims["aud"] != [self._audience]:
            raise TokenError("assertion is not meant for this authorization server")
        if float(claims["exp"]) - float(claims["iat"]) > self._max_lifetime:
            raise TokenError("assertion lives too long")
        for name in ("sub", "jti", "client_id"):
            if not isinstance(claims[name], str) or not claims[name] or len(claims[name]) > 512:
                raise TokenError(f"assertion {name} is not a usable string")
        return claims
