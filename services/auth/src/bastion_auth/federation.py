"""Sign-in through an organisation's OpenID provider (OIDC Core 1.0, authorization code
flow with PKCE, `state` and `nonce`).

People are linked by (issuer, `sub`), never by email; a user is created at the first
sign-in and its roles are recomputed from the provider's claims at every sign-in and at
every refresh of our own tokens (the provider's refresh token is kept sealed for that),
so someone removed from a group loses the role within one refresh. A disabled user
stays disabled whatever the provider says. ID tokens are verified in
`bastion_common.tokens`, the one module that decodes JWTs.

Nothing here logs or records a token, a code or a secret.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx2
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from redis.asyncio import Redis

from bastion_auth.crypto import Sealer
from bastion_auth.settings import OidcProvider, Settings
from bastion_auth.store import FED_LINK, FED_STATE, FED_STATE_TTL, FED_USER, digest
from bastion_auth.users import UserError, UserStore
from bastion_common.logging import get_logger
from bastion_common.tokens import IdTokenValidator, TokenError, TrustedIssuer

__all__ = ["FederatedIdentity", "Federation", "FederationError"]

log = get_logger(__name__)
DISCOVERY_TTL = 3600.0
_NAME_CHARS = re.compile(r"[^a-z0-9._-]+")


class FederationError(Exception):
    """A sign-in through a provider that cannot go on; `message` is for the person,
    `reason` for the audit record, `unavailable` when the provider could not be reached."""

    def __init__(self, message: str, reason: str, *, unavailable: bool = False) -> None:
        super().__init__(reason)
        self.message = message
        self.reason = reason
        self.unavailable = unavailable


@dataclass(frozen=True)
class FederatedIdentity:
    username: str
    roles: list[str]
    provider: str


@dataclass
class _Provider:
    config: OidcProvider
    metadata: dict[str, Any] | None = None
    fetched_at: float = float("-inf")
    validator: IdTokenValidator | None = None
    validator_jwks: str | None = None


class Federation:
    def __init__(
        self, settings: Settings, redis: Redis, users: UserStore, http: httpx2.AsyncClient
    ) -> None:
        self._s = settings
        self._redis = redis
        self._users = users
        self._http = http
        self._sealer = Sealer(settings.key_encryption_key.get_secret_value(), "idp-refresh")
        self._providers = {p.id: _Provider(p) for p in settings.oidc_providers}

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def providers(self) -> list[OidcProvider]:
        return [p.config for p in self._providers.values()]

    @property
    def redirect_uri(self) -> str:
        return f"{self._s.issuer}/federated/callback"

    def get(self, provider_id: str) -> OidcProvider | None:
        found = self._providers.get(provider_id)
        return found.config if found else None

    # --- discovery -----------------------------------------------------------------

    async def _metadata(self, provider: _Provider) -> dict[str, Any]:
        fresh = time.monotonic() - provider.fetched_at < DISCOVERY_TTL
        if provider.metadata is not None and fresh:
            return provider.metadata
        issuer = provider.config.issuer
        try:
            response = await self._http.get(f"{issuer}/.well-known/openid-configuration")
            response.raise_for_status()
            document = response.json()
        except (httpx2.HTTPError, ValueError) as exc:
            log.warning(
                "oidc.discovery_failed", provider=provider.config.id, error=type(exc).__name__
            )
            if provider.metadata is not None:
                return provider.metadata  # a provider's hiccup does not unlearn its keys
            raise self._unreachable(provider.config) from None
        if not isinstance(document, dict) or document.get("issuer") != issuer:
            # OIDC Discovery §4.3: the document must name exactly the configured issuer.
            raise FederationError(
                f"{provider.config.name} is misconfigured. Tell your administrator.",
                "discovery document names another issuer",
            )
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            self._check_endpoint(provider.config, document.get(name))
        provider.metadata = document
        provider.fetched_at = time.monotonic()
        if provider.validator is None or provider.validator_jwks != document["jwks_uri"]:
            trusted = TrustedIssuer(
                issuer, jwks_url=document["jwks_uri"], algorithms=provider.config.algorithms
            )
            provider.validator = IdTokenValidator(
                trusted, provider.config.client_id, http_client=self._http
            )
            provider.validator_jwks = document["jwks_uri"]
        return document

    def _check_endpoint(self, config: OidcProvider, url: object) -> None:
        ok = isinstance(url, str) and (
            url.startswith("https://") or (self._s.oidc_allow_http and url.startswith("http://"))
        )
        if not ok:
            raise FederationError(
                f"{config.name} is misconfigured. Tell your administrator.",
                "discovery document lacks an https endpoint",
            )

    @staticmethod
    def _unreachable(config: OidcProvider) -> FederationError:
        return FederationError(
            f"{config.name} cannot be reached right now. Try again in a moment, or cancel.",
            "provider unreachable",
            unavailable=True,
        )

    # --- the flow ----------------------------------------------------------------------

    async def begin(self, provider_id: str, sid: str, request_id: str) -> str:
        """The provider's authorization URL for this browser session and request."""
        provider = self._providers[provider_id]
        metadata = await self._metadata(provider)
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        record = {
            "provider": provider_id,
            "sid_digest": digest(sid),
            "request_id": request_id,
            "nonce": nonce,
            "verifier": verifier,
        }
        await self._redis.set(
            FED_STATE.format(state=digest(state)), json.dumps(record), ex=FED_STATE_TTL
        )
        query = {
            "response_type": "code",
            "client_id": provider.config.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(provider.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        return f"{metadata['authorization_endpoint']}?{urlencode(query)}"

    async def take_state(self, state: str, sid: str | None) -> dict[str, Any] | None:
        """The sign-in `state` names, once, and only for the browser that started it."""
        if not state or len(state) > 256:
            return None
        raw = await self._redis.getdel(FED_STATE.format(state=digest(state)))
        if raw is None:
            return None
        record: dict[str, Any] = json.loads(raw)
        if sid is None or not secrets.compare_digest(record["sid_digest"], digest(sid)):
            return None
        return record

    async def finish(self, record: dict[str, Any], code: str) -> FederatedIdentity:
        provider = self._providers[record["provider"]]
        metadata = await self._metadata(provider)
        tokens = await self._token_request(
            provider,
            metadata,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri,
                "code_verifier": record["verifier"],
            },
        )
        claims = await self._claims(provider, metadata, tokens, nonce=record["nonce"])
        return await self._link(provider.config, claims, tokens.get("refresh_token"))

    async def refresh_roles(self, username: str) -> list[str] | None:
        """Ask the provider again who `username` is, and apply the roles that gives.

        None for a user who did not sign in through a provider (nothing to do). Raises
        FederationError when the provider no longer vouches for the person, or cannot
        be asked (then our refresh is refused: fail closed)."""
        link_key = await self._redis.get(FED_USER.format(username=username))
        if link_key is None:
            return None
        raw = await self._redis.get(link_key)
        if raw is None:
            raise FederationError("Sign in again.", "provider link is gone")
        link = json.loads(raw)
        provider = self._providers.get(link["provider"])
        if provider is None:
            raise FederationError("Sign in again.", "provider is no longer configured")
        if not link.get("refresh"):
            raise FederationError("Sign in again.", "provider gave no refresh token")
        refresh = self._sealer.open(base64.b64decode(link["refresh"])).decode()
        metadata = await self._metadata(provider)
        tokens = await self._token_request(
            provider, metadata, {"grant_type": "refresh_token", "refresh_token": refresh}
        )
        claims = await self._claims(provider, metadata, tokens, nonce=None)
        if claims["sub"] != link["sub"]:
            raise FederationError("Sign in again.", "provider answered for another subject")
        identity = await self._link(provider.config, claims, tokens.get("refresh_token") or refresh)
        return identity.roles

    async def _token_request(
        self, provider: _Provider, metadata: dict[str, Any], data: dict[str, str]
    ) -> dict[str, Any]:
        config = provider.config
        headers = {"Accept": "application/json"}
        if config.token_auth_method == "client_secret_post":  # noqa: S105 - a method name
            data = {**data, "client_id": config.client_id, "client_secret": config.secret}
        else:  # RFC 6749 §2.3.1: both form-encoded before they are joined
            pair = f"{quote(config.client_id, safe='')}:{quote(config.secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            response = await self._http.post(metadata["token_endpoint"], data=data, headers=headers)
        except httpx2.HTTPError:
            raise self._unreachable(config) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 500:
            raise self._unreachable(config)
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise FederationError(
                f"{config.name} did not confirm the sign-in. Start again.",
                f"token endpoint refused: {str(error)[:64]}",
            )
        return body

    async def _claims(
        self,
        provider: _Provider,
        metadata: dict[str, Any],
        tokens: dict[str, Any],
        *,
        nonce: str | None,
    ) -> dict[str, Any]:
        config = provider.config
        id_token, access = tokens.get("id_token"), tokens.get("access_token")
        if not isinstance(id_token, str) or provider.validator is None:
            raise FederationError(
                f"{config.name} did not send an ID token. Tell your administrator.",
                "no ID token",
            )
        try:
            claims = await provider.validator.validate(
                id_token, nonce=nonce, access_token=access if isinstance(access, str) else None
            )
        except TokenError as exc:
            raise FederationError(
                f"The answer from {config.name} could not be verified. Start again.",
                f"ID token refused: {exc.description}",
            ) from None
        if config.userinfo and isinstance(access, str) and metadata.get("userinfo_endpoint"):
            claims = {**claims, **await self._userinfo(config, metadata, access, claims["sub"])}
        return claims

    async def _userinfo(
        self, config: OidcProvider, metadata: dict[str, Any], access: str, sub: str
    ) -> dict[str, Any]:
        try:
            response = await self._http.get(
                metadata["userinfo_endpoint"], headers={"Authorization": f"Bearer {access}"}
            )
            info = response.json() if response.status_code == 200 else None
        except (httpx2.HTTPError, ValueError):
            raise self._unreachable(config) from None
        # OIDC Core §5.3.2: the userinfo `sub` must be the ID token's, or it is not used.
        if not isinstance(info, dict) or info.get("sub") != sub:
            raise FederationError(
                f"The answer from {config.name} could not be verified. Start again.",
                "userinfo is not about the ID token's subject",
            )
        return {k: v for k, v in info.items() if k not in ("iss", "aud", "sub", "exp", "iat")}

    # --- who becomes what ----------------------------------------------------------------

    @staticmethod
    def roles_for(config: OidcProvider, claims: dict[str, Any]) -> list[str] | None:
        """Our roles for these claims, or None when the allowlist keeps the person out."""
        groups = claims.get(config.groups_claim)
        group_set = {str(g) for g in groups} if isinstance(groups, list) else set()
        if config.allowed_email_domains or config.allowed_groups:
            email = claims.get("email")
            domain_ok = (
                isinstance(email, str)
                and claims.get("email_verified") is True
                and email.rsplit("@", 1)[-1].lower() in config.allowed_email_domains
            )
            if not domain_ok and not group_set & set(config.allowed_groups):
                return None
        roles = set(config.default_roles)
        for rule in config.role_rules:
            value = claims.get(rule.claim)
            held = {str(v) for v in value} if isinstance(value, list) else {str(value)}
            if rule.value in held:
                roles.add(rule.role)
        return sorted(roles)

    async def _link(
        self, config: OidcProvider, claims: dict[str, Any], refresh: object
    ) -> FederatedIdentity:
        roles = self.roles_for(config, claims)
        if roles is None:
            raise FederationError(
                f"Your {config.name} account is not allowed to use this server. "
                "Ask your administrator for access.",
                "not allowed by the provider's allowlist",
            )
        sub = str(claims["sub"])
        link_key = FED_LINK.format(provider=config.id, subject=digest(f"{config.issuer}|{sub}"))
        raw = await self._redis.get(link_key)
        link: dict[str, Any] = json.loads(raw) if raw else {}
        username = link.get("username") or await self._create_user(config, claims, roles)
        user = await self._users.get(username)
        if user is None:
            raise FederationError("Sign in again.", "linked user is gone")
        if user.disabled:  # an administrator's word wins over the provider's
            raise FederationError(
                "This account is disabled. Ask your administrator.", "account disabled"
            )
        if sorted(user.roles) != roles:
            await self._users.update(username, roles=roles)
        sealed = (
            base64.b64encode(self._sealer.seal(refresh.encode())).decode()
            if isinstance(refresh, str) and refresh
            else link.get("refresh")
        )
        record = {"username": username, "provider": config.id, "sub": sub, "refresh": sealed}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(link_key, json.dumps(record))
            pipe.set(FED_USER.format(username=username), link_key)
            await pipe.execute()
        return FederatedIdentity(username, roles, config.id)

    async def _create_user(
        self, config: OidcProvider, claims: dict[str, Any], roles: list[str]
    ) -> str:
        hint = claims.get(config.username_claim) or claims.get("email") or ""
        base = _NAME_CHARS.sub("-", str(hint).split("@", 1)[0].lower()).strip("-._")[:40]
        base = base or digest(str(claims["sub"]))[:12]
        # The person has no password here: a random one nobody knows keeps the password
        # form closed to this account.
        for name in (f"{base}@{config.id}", f"{base}-{digest(str(claims['sub']))[:6]}@{config.id}"):
            try:
                await self._users.create(name, secrets.token_urlsafe(32), roles)
                return name
            except UserError:
                continue
        raise FederationError("Sign in again.", "no free username for this person")
