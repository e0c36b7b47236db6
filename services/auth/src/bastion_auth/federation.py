"""Sign-in through an organisation's identity provider: OpenID Connect (Core 1.0,
authorization code flow with PKCE, `state` and `nonce`) and GitHub (plain OAuth 2.0,
`bastion_auth.github`).

Who becomes what is `bastion_auth.linking` (linked by issuer and subject, roles from
claims at every sign-in and at every refresh of our own tokens, through the provider's
credential kept sealed). ID tokens are verified in `bastion_common.tokens`, the one
module that decodes JWTs; the provider's answer is checked against mix-up first
(`bastion_auth.mixup`, RFC 9207).

Nothing here logs or records a token, a code or a secret.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx2
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from redis.asyncio import Redis

from bastion_auth import mixup
from bastion_auth.github import GitHubApi
from bastion_auth.linking import FederatedIdentity, FederationError, Linker
from bastion_auth.settings import GitHubProvider, OidcProvider, Settings
from bastion_auth.store import FED_STATE, FED_STATE_TTL, digest
from bastion_auth.users import UserStore
from bastion_common.idtokens import IdTokenValidator
from bastion_common.logging import get_logger
from bastion_common.tokens import TokenError, TrustedIssuer

__all__ = ["FederatedIdentity", "Federation", "FederationError"]

log = get_logger(__name__)
DISCOVERY_TTL = 3600.0
AnyProvider = OidcProvider | GitHubProvider


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
        self._http = http
        self._linker = Linker(redis, users, settings.key_encryption_key.get_secret_value())
        self._configs: dict[str, AnyProvider] = {p.id: p for p in settings.oidc_providers}
        self._providers = {
            p.id: _Provider(p) for p in settings.oidc_providers if isinstance(p, OidcProvider)
        }
        self._github = {
            p.id: GitHubApi(p, http)
            for p in settings.oidc_providers
            if isinstance(p, GitHubProvider)
        }

    @property
    def linker(self) -> Linker:
        return self._linker

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def providers(self) -> list[AnyProvider]:
        return list(self._configs.values())

    def redirect_uri(self, provider_id: str) -> str:
        """OpenID providers name themselves (`iss`) and share one redirect URI; a provider
        that does not (GitHub) gets its own (RFC 9700 §4.4.2.2)."""
        if provider_id in self._github:
            return f"{self._s.issuer}/federated/callback/{provider_id}"
        return f"{self._s.issuer}/federated/callback"

    def get(self, provider_id: str) -> AnyProvider | None:
        return self._configs.get(provider_id)

    def method(self, provider_id: str) -> str:
        """How a person signed in, for the audit record: "oidc" or "github"."""
        config = self._configs.get(provider_id)
        return config.kind if config is not None else "oidc"

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
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        github = self._github.get(provider_id)
        if github is None:
            provider = self._providers[provider_id]
            endpoint = (await self._metadata(provider))["authorization_endpoint"]
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
        challenge = create_s256_code_challenge(verifier)
        if github is not None:
            return github.authorization_url(self.redirect_uri(provider_id), state, challenge)
        query = {
            "response_type": "code",
            "client_id": provider.config.client_id,
            "redirect_uri": self.redirect_uri(provider_id),
            "scope": " ".join(provider.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        return f"{endpoint}?{urlencode(query)}"

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

    async def check_answer(
        self, record: dict[str, Any], iss: str | None, path_provider: str | None
    ) -> None:
        """Mix-up defence (RFC 9207, RFC 9700 §4.4) before anything else is done with the
        provider's answer, errors included."""
        config = self._configs[record["provider"]]
        if isinstance(config, GitHubProvider):
            mixup.check_callback_provider(config.name, config.id, path_provider)
            mixup.check_response_issuer(config.name, config.issuer, {}, iss)
            return
        mixup.check_callback_provider(config.name, config.id, path_provider or config.id)
        metadata = await self._metadata(self._providers[config.id])
        mixup.check_response_issuer(config.name, config.issuer, metadata, iss)

    async def finish(self, record: dict[str, Any], code: str) -> FederatedIdentity:
        provider_id = record["provider"]
        github = self._github.get(provider_id)
        if github is not None:
            token = await github.exchange(code, record["verifier"], self.redirect_uri(provider_id))
            claims = await github.claims(token)
            return await self._linker.link(github.config, github.config.issuer, claims, token)
        provider = self._providers[provider_id]
        metadata = await self._metadata(provider)
        tokens = await self._token_request(
            provider,
            metadata,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri(provider_id),
                "code_verifier": record["verifier"],
            },
        )
        claims = await self._claims(provider, metadata, tokens, nonce=record["nonce"])
        return await self._linker.link(
            provider.config, provider.config.issuer, claims, tokens.get("refresh_token")
        )

    async def refresh_roles(self, username: str) -> list[str] | None:
        """Ask the provider again who `username` is, and apply the roles that gives.

        None for a user who did not sign in through a provider (nothing to do). Raises
        FederationError when the provider no longer vouches for the person, or cannot
        be asked (then our refresh is refused: fail closed)."""
        link = await self._linker.link_of(username)
        if link is None:
            return None
        config = self._configs.get(link.provider)
        if config is None:
            raise FederationError("Sign in again.", "provider is no longer configured")
        if not link.credential:
            raise FederationError("Sign in again.", "provider gave no refresh token")
        new_credential: str | None
        if isinstance(config, GitHubProvider):
            # A GitHub OAuth token does not expire: asking the API again is the refresh.
            claims = await self._github[config.id].claims(link.credential)
            new_credential = None
        else:
            provider = self._providers[config.id]
            metadata = await self._metadata(provider)
            tokens = await self._token_request(
                provider,
                metadata,
                {"grant_type": "refresh_token", "refresh_token": link.credential},
            )
            claims = await self._claims(provider, metadata, tokens, nonce=None)
            new_credential = tokens.get("refresh_token")
        if str(claims["sub"]) != link.subject:
            raise FederationError("Sign in again.", "provider answered for another subject")
        identity = await self._linker.link(config, config.issuer, claims, new_credential)
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
