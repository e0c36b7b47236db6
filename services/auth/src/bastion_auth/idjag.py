"""Enterprise-managed authorization: the JWT bearer grant (RFC 7523 §2.1) with an Identity
Assertion JWT Authorization Grant (ID-JAG, draft-ietf-oauth-identity-assertion-authz-grant
§4.3; MCP's enterprise-managed authorization extension).

The organisation's IdP has already decided that this client may act for this person at
this server (it issued the assertion after a token exchange, RFC 8693); we check that it
said so to us, and say no more than it did:

- the assertion (`bastion_common.idtokens.AssertionValidator`): typ `oauth-id-jag+jwt`,
  a trusted issuer's signature, `aud` = our issuer, `exp`/`iat` with leeway;
- `client_id` = the client that authenticated here (§4.3: the same client); only
  confidential clients configured for this grant may use it (AUTH_IDJAG_CLIENTS);
- `resource` (RFC 8707) = one resource we serve; a `resource` parameter must agree;
- single use: its `jti` is taken once, atomically (SET NX until it expires, RFC 7523 §3
  item 7), after the signature is checked so that forgeries cannot burn real ones;
- the person is linked like any federated sign-in (`linking`: issuer + `sub`, roles
  from claims through the issuer's role rules); scopes are the assertion's `scope` (and
  the request's, RFC 6749 §3.3) cut to those roles and to the resource.

The answer is an access token only: the IdP decides again at each assertion, so no
refresh token outlives its decision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx2
from redis.asyncio import Redis

from bastion_auth.errors import OAuthError
from bastion_auth.linking import FederatedIdentity, FederationError, Linker
from bastion_auth.resources import grant_scopes
from bastion_auth.settings import AssertionIssuer, Settings
from bastion_auth.store import IDJAG_JTI, digest
from bastion_common.idtokens import AssertionValidator
from bastion_common.permissions import parse_scope
from bastion_common.tokens import MAX_LEEWAY_SECONDS, TokenError, TrustedIssuer

__all__ = ["JWT_BEARER", "IdJagGrant", "IdJagResult"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class IdJagResult:
    identity: FederatedIdentity
    resource: str
    scopes: list[str]
    issuer: str


class IdJagGrant:
    def __init__(
        self, settings: Settings, redis: Redis, linker: Linker, http: httpx2.AsyncClient
    ) -> None:
        self._s = settings
        self._redis = redis
        self._linker = linker
        self._issuers: dict[str, AssertionIssuer] = {i.issuer: i for i in settings.idjag_issuers}
        self._validator = (
            AssertionValidator(
                [
                    TrustedIssuer(i.issuer, jwks_url=i.jwks_url, algorithms=i.algorithms)
                    for i in settings.idjag_issuers
                ],
                settings.issuer,
                http_client=http,
                max_lifetime=settings.idjag_max_lifetime,
            )
            if settings.idjag_issuers
            else None
        )

    @property
    def enabled(self) -> bool:
        return self._validator is not None

    async def redeem(
        self, client_id: str, form: dict[str, str], resources: list[str]
    ) -> IdJagResult:
        """Who the assertion in `form` speaks for, at which resource, with which scopes;
        OAuthError invalid_grant (or invalid_target) otherwise."""
        assertion = form.get("assertion")
        if not assertion:
            raise OAuthError("invalid_request", "assertion is required (RFC 7523 §2.1)")
        if self._validator is None:
            raise OAuthError("unsupported_grant_type", "no assertion issuer is trusted")
        try:
            claims = await self._validator.validate(assertion)
        except TokenError as exc:
            raise OAuthError("invalid_grant", exc.description) from None
        if claims["client_id"] != client_id:  # ID-JAG §4.3: the client that authenticated
            raise OAuthError("invalid_grant", "assertion was issued to another client")
        resource = self._resource(claims.get("resource"), resources)
        trusted = self._issuers[claims["iss"]]
        await self._take_jti(claims)
        try:
            identity = await self._linker.link(trusted, trusted.issuer, claims)
        except FederationError as exc:
            raise OAuthError("invalid_grant", exc.reason) from None
        granted = parse_scope(claims.get("scope")) if isinstance(claims.get("scope"), str) else None
        wanted = parse_scope(form.get("scope")) if form.get("scope") else granted
        if granted is not None and wanted is not None and not wanted <= granted:
            raise OAuthError("invalid_scope", "more scopes asked for than the assertion grants")
        scopes = grant_scopes(
            self._s,
            resource,
            " ".join(sorted(wanted)) if wanted is not None else None,
            roles=identity.roles,
        )
        return IdJagResult(identity, resource, scopes, trusted.issuer)

    def _resource(self, claimed: Any, requested: list[str]) -> str:
        """RFC 8707 and ID-JAG §3: one resource we serve, named by the assertion."""
        values = [claimed] if isinstance(claimed, str) else claimed
        usable = isinstance(values, list) and all(isinstance(v, str) for v in values)
        if not usable or not values:
            raise OAuthError("invalid_grant", "assertion names no resource")
        if len(requested) > 1:
            raise OAuthError("invalid_target", "exactly one resource per request")
        if requested:
            if requested[0] not in values:
                raise OAuthError("invalid_grant", "resource is not one the assertion names")
            chosen = requested[0]
        elif len(values) == 1:
            chosen = values[0]
        else:
            raise OAuthError("invalid_target", "the assertion names several resources: pick one")
        if chosen not in self._s.resources:
            raise OAuthError("invalid_grant", "assertion names a resource not served here")
        return chosen

    async def _take_jti(self, claims: dict[str, Any]) -> None:
        ttl = max(int(float(claims["exp"]) - time.time()) + MAX_LEEWAY_SECONDS, 1)
        key = IDJAG_JTI.format(digest=digest(f"{claims['iss']}|{claims['jti']}"))
        if not await self._redis.set(key, "1", nx=True, ex=ttl):  # RFC 7523 §3 item 7
            raise OAuthError("invalid_grant", "assertion was already used")
