"""The identity providers people may sign in through, and the ID-JAG issuers and clients
auth trusts: the models of AUTH_OIDC_PROVIDERS, AUTH_IDJAG_ISSUERS and AUTH_IDJAG_CLIENTS
(read by `settings.Settings`)."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from bastion_common.policyroles import ROLE_PATTERN

__all__ = [
    "AssertionClient",
    "AssertionIssuer",
    "GitHubProvider",
    "OidcProvider",
    "Provider",
    "RoleMapping",
    "RoleRule",
]


# A role of the policy file; that it exists there is checked once the file is read.
RoleName = Annotated[str, Field(pattern=ROLE_PATTERN)]


class RoleRule(BaseModel):
    """A provider claim value that grants one of our roles, e.g. groups=premium-users."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    claim: str = Field(min_length=1, max_length=64)
    value: str = Field(min_length=1, max_length=256)
    role: RoleName


class RoleMapping(BaseModel):
    """Who becomes what, for any source of people (docs/sign-in.md): our roles from the
    source's claims, and who may come in at all."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    name: str = Field(min_length=1, max_length=64, description="shown as 'Sign in with NAME'")
    username_claim: str = "preferred_username"
    default_roles: tuple[RoleName, ...] = ("user",)
    role_rules: list[RoleRule] = Field(default_factory=list)
    # Who may sign in at all (empty: anyone the provider vouches for).
    allowed_email_domains: list[str] = Field(default_factory=list)
    allowed_groups: list[str] = Field(default_factory=list)
    groups_claim: str = "groups"


class _SecretByReference(BaseModel):
    client_secret_env: str = Field(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")

    @property
    def secret(self) -> str:
        value = os.environ.get(self.client_secret_env, "")
        if not value:
            raise ValueError(f"{self.client_secret_env} is not set")
        return value


class OidcProvider(RoleMapping, _SecretByReference):
    """An organisation's OpenID provider people may sign in through (AUTH_OIDC_PROVIDERS).

    The client secret is given by reference: the name of an environment variable that
    holds it (`client_secret_env`), never inline in the provider list."""

    kind: Literal["oidc"] = "oidc"
    issuer: str = Field(min_length=8, max_length=512)
    client_id: str = Field(min_length=1, max_length=256)
    token_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"  # noqa: S105 - a method name
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    userinfo: bool = Field(default=False, description="also read the userinfo endpoint")


class GitHubProvider(RoleMapping, _SecretByReference):
    """GitHub (an OAuth App or GitHub App), a plain OAuth 2.0 provider: identity from its
    REST API. `groups` holds the person's organisations (`acme`) and teams (`acme/admins`).
    The URLs are GitHub's; GitHub Enterprise Server (or a test stand-in) sets its own."""

    kind: Literal["github"]
    client_id: str = Field(min_length=1, max_length=256)
    scopes: list[str] = Field(default_factory=lambda: ["read:user", "user:email", "read:org"])
    authorize_url: str = "https://github.com/login/oauth/authorize"
    token_url: str = "https://github.com/login/oauth/access_token"  # noqa: S105 - a URL
    api_url: str = "https://api.github.com"
    username_claim: str = "login"

    @property
    def issuer(self) -> str:
        """What a GitHub account is linked under (with its numeric id, never its login)."""
        return self.api_url.rstrip("/")


def _provider_kind(value: Any) -> str:
    kind = value.get("kind", "oidc") if isinstance(value, dict) else getattr(value, "kind", "")
    return str(kind)


Provider = Annotated[
    Annotated[OidcProvider, Tag("oidc")] | Annotated[GitHubProvider, Tag("github")],
    Discriminator(_provider_kind),
]


class AssertionIssuer(RoleMapping):
    """An enterprise IdP whose identity assertion grants (ID-JAG) we accept (AUTH_IDJAG_ISSUERS)."""

    issuer: str = Field(min_length=8, max_length=512)
    jwks_url: str = Field(min_length=8, max_length=512)
    algorithms: tuple[str, ...] = ("RS256", "ES256")


class AssertionClient(_SecretByReference):
    """A confidential client that may present ID-JAG assertions (AUTH_IDJAG_CLIENTS)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    client_id: str = Field(min_length=1, max_length=256)
