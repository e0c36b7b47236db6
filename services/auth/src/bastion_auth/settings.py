"""Settings of the auth service (environment variables prefixed AUTH_)."""

from __future__ import annotations

import ssl
from typing import Literal, Self

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from bastion_auth.providers import (
    AssertionClient,
    AssertionIssuer,
    GitHubProvider,
    OidcProvider,
    Provider,
    RoleMapping,
    RoleRule,
)
from bastion_common.policyroles import Permission
from bastion_common.settings import PolicySettings, Secret, check_secret_strength

__all__ = [
    "HS256_REFUSED",
    "AssertionClient",
    "AssertionIssuer",
    "GitHubProvider",
    "OidcProvider",
    "Provider",
    "RoleMapping",
    "RoleRule",
    "Settings",
]


HS256_REFUSED = (
    "HS256 mode is not supported: keys and audit accept only ES256 tokens from auth's JWKS,"
    " and one shared secret would let any service holding it mint tokens for every"
    " audience, the admin API included. Unset AUTH_SIGNING_ALG and AUTH_HS256_SECRET."
)


class Settings(PolicySettings):
    model_config = SettingsConfigDict(
        env_prefix="AUTH_", extra="ignore", populate_by_name=True, frozen=True
    )

    service_name: str = "auth"
    key_encryption_key: Secret = Field(description="encrypts signing keys at rest")
    session_secret: Secret = Field(description="signs login sessions and CSRF tokens")
    public_url: str = Field(
        default="http://localhost:8001", description="the issuer identifier (RFC 8414 §2)"
    )
    # RFC 8707 resources this server issues tokens for (the admin API is added itself).
    tools_resource: str = "http://localhost:8003/mcp"
    keys_resource: str = "http://localhost:8002"
    audit_resource: str = "http://localhost:8004"
    # What the consent page calls each resource; JSON {uri: name}, defaults below.
    resource_names: dict[str, str] = Field(
        default_factory=dict, description="names shown on the consent page, by resource URI"
    )

    access_token_ttl: int = Field(default=1800, ge=60, le=86400)
    refresh_token_ttl: int = Field(default=7 * 86400, ge=300)
    code_ttl: int = Field(default=60, ge=10, le=600)
    refresh_grace_seconds: float = Field(default=10.0, ge=0, le=120)
    service_token_ttl: int = Field(default=600, ge=60, le=3600)

    # Kept only to refuse them with a clear message (see `_no_hs256`): ES256 is the mode.
    signing_alg: Literal["ES256", "HS256"] = "ES256"
    hs256_secret: SecretStr | None = Field(
        default=None, description="refused at start-up (no HS256 mode)"
    )
    # A rotated-in key is published this long before it signs (resource servers cache JWKS).
    key_publish_lead_seconds: float = Field(default=30.0, ge=0, le=3600)

    tools_client_secret: SecretStr | None = Field(
        default=None, description="secret of the confidential client bastion-tools"
    )
    bootstrap_admin_username: str | None = Field(
        default=None, validation_alias="BOOTSTRAP_ADMIN_USERNAME"
    )
    bootstrap_admin_password: SecretStr | None = Field(
        default=None, validation_alias="BOOTSTRAP_ADMIN_PASSWORD"
    )

    # Sign-in through the organisation's identity providers (JSON list of OidcProvider).
    oidc_providers: list[Provider] = Field(
        default_factory=list,
        description="OpenID providers (and GitHub) people may sign in through (JSON)",
    )
    local_login: bool = Field(default=True, description="offer the username/password form")
    oidc_allow_http: bool = Field(default=False, description="tests only: http providers")
    oidc_timeout: float = Field(default=5.0, gt=0, le=30)
    # Enterprise-managed authorization (ID-JAG, RFC 7523 jwt-bearer): who issues the
    # assertions, and the clients that may present them.
    idjag_issuers: list[AssertionIssuer] = Field(
        default_factory=list, description="enterprise IdPs whose ID-JAG assertions are accepted"
    )
    idjag_clients: list[AssertionClient] = Field(
        default_factory=list, description="confidential clients that may present ID-JAGs"
    )
    idjag_max_lifetime: int = Field(default=300, ge=30, le=3600)
    # Token exchange (RFC 8693, exchange.py): upstream MCP servers that trust our tokens,
    # {resource URI: [scopes it offers]}; only the gateway's client may exchange for them.
    token_exchange_audiences: dict[str, list[Permission]] = Field(
        default_factory=dict,
        description="upstream resources the gateway may exchange callers' tokens for (JSON)",
    )
    token_exchange_ttl: int = Field(default=300, ge=30, le=3600)

    # Brute force (per account and per client IP, both over `lockout_window`).
    lockout_threshold: int = Field(default=5, ge=1)
    lockout_window: int = Field(default=900, ge=60)
    lockout_base_delay: int = Field(default=30, ge=1)
    lockout_max_delay: int = Field(default=3600, ge=1)
    ip_failure_limit: int = Field(default=50, ge=1)
    # trusted_proxies (AUTH_TRUSTED_PROXIES) comes from ServiceSettings (clientip.py).

    # What unauthenticated requests may create, per address (quota.py).
    register_per_ip: int = Field(
        default=100, ge=1, description="client registrations per address per hour"
    )
    authorize_per_ip: int = Field(
        default=300,
        ge=1,
        description="authorization requests per address per 10 minutes"
        " (each may leave a pending request and a session)",
    )
    dcr_client_ttl_days: float = Field(
        default=30.0, gt=0, description="a registered (DCR) client unused this long expires"
    )

    # Client ID metadata documents. A host listed in `cimd_allowed_hosts` is exempt from
    # the public-address check (it may resolve to a private or loopback address), so the
    # default is empty: no internal address is ever fetched unless configured here.
    cimd_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="hosts whose metadata documents may be fetched from internal addresses",
    )
    cimd_allow_http: bool = Field(default=False, description="tests only: fetch http URLs")
    cimd_ca_file: str | None = Field(
        default=None,
        description="tests/dev only: PEM CA trusted, besides the system roots, for documents",
    )
    cimd_timeout: float = Field(default=5.0, gt=0, le=30)
    cimd_max_bytes: int = Field(default=5120, ge=512, le=65536)
    cimd_cache_seconds: int = Field(default=300, ge=0, le=86400)

    # Argon2id cost (RFC 9106 second recommended option: 64 MiB, t=3, p=4).
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    @property
    def issuer(self) -> str:
        # One spelling everywhere: no trailing slash (RFC 8414 §3.3 compares strings).
        return self.public_url.rstrip("/")

    @property
    def admin_resource(self) -> str:
        return f"{self.issuer}/admin"

    @property
    def resources(self) -> dict[str, frozenset[str]]:
        """Resource URI -> scopes it offers (docs/architecture.md, contracts)."""
        return {
            self.tools_resource.rstrip("/"): self.roles.offered,
            self.keys_resource.rstrip("/"): self.roles.offered,
            self.audit_resource.rstrip("/"): frozenset({"metrics:view"}),
            self.admin_resource: frozenset({"admin:users"}),
        }

    @property
    def exchange_audiences(self) -> dict[str, frozenset[str]]:
        """Upstream resource URI -> scopes it offers, for token exchange only."""
        return {
            uri.rstrip("/"): frozenset(scopes)
            for uri, scopes in self.token_exchange_audiences.items()
        }

    def resource_name(self, resource: str) -> str:
        defaults = {
            self.tools_resource.rstrip("/"): "MCP tools",
            self.keys_resource.rstrip("/"): "API keys",
            self.audit_resource.rstrip("/"): "Audit reports",
            self.admin_resource: "User administration",
        }
        return self.resource_names.get(resource) or defaults.get(resource, resource)

    @field_validator("signing_alg", "hs256_secret")
    @classmethod
    def _no_hs256(cls, value: object) -> object:
        # keys and audit verify auth's tokens against its JWKS only, and one shared secret
        # would let every holder (tools) mint tokens for any audience, /admin included.
        if value is not None and value != "ES256":
            raise ValueError(HS256_REFUSED)
        return value

    @model_validator(mode="after")
    def _secrets_usable(self) -> Self:
        if self.cimd_ca_file is not None:
            try:
                ssl.create_default_context(cafile=self.cimd_ca_file)
            except (OSError, ssl.SSLError):
                raise ValueError("AUTH_CIMD_CA_FILE is not a readable PEM CA file") from None
        ids = [p.id for p in self.oidc_providers]
        if len(ids) != len(set(ids)):
            raise ValueError("AUTH_OIDC_PROVIDERS: provider ids must be unique")
        for provider in self.oidc_providers:
            self._check_provider(provider)
        self._check_role_names()
        if len({i.id for i in self.idjag_issuers}) != len(self.idjag_issuers):
            raise ValueError("AUTH_IDJAG_ISSUERS: issuer ids must be unique")
        for trusted in self.idjag_issuers:
            for url in (trusted.issuer, trusted.jwks_url):
                self._check_url(f"AUTH_IDJAG_ISSUERS: {trusted.id}", url)
        for client in self.idjag_clients:
            try:
                problem = check_secret_strength(client.secret)
            except ValueError as exc:
                raise ValueError(f"AUTH_IDJAG_CLIENTS: {client.client_id}: {exc}") from None
            if problem:
                raise ValueError(f"AUTH_IDJAG_CLIENTS: {client.client_secret_env} {problem}")
        for uri, scopes in self.exchange_audiences.items():
            where = f"AUTH_TOKEN_EXCHANGE_AUDIENCES: {uri}"
            if not uri.startswith(("https://", "http://")):
                raise ValueError(f"{where}: an audience is an http(s) resource URI")
            if uri in self.resources:
                raise ValueError(f"{where}: is one of our own resources, not an upstream")
            if not scopes:
                raise ValueError(f"{where}: name the scopes it offers")
        if self.exchange_audiences and self.tools_client_secret is None:
            raise ValueError(
                "AUTH_TOKEN_EXCHANGE_AUDIENCES needs AUTH_TOOLS_CLIENT_SECRET: only the"
                " gateway's client (bastion-tools) may exchange"
            )
        if not self.local_login and not self.oidc_providers:
            raise ValueError("AUTH_LOCAL_LOGIN=false needs at least one AUTH_OIDC_PROVIDERS entry")
        if self.tools_client_secret is not None:
            problem = check_secret_strength(self.tools_client_secret.get_secret_value())
            if problem:
                raise ValueError(f"AUTH_TOOLS_CLIENT_SECRET {problem}")
        return self

    def _check_url(self, where: str, url: str) -> None:
        if not url.startswith("https://") and not (
            self.oidc_allow_http and url.startswith("http://")
        ):
            raise ValueError(f"{where} URLs must be https")

    def _check_role_names(self) -> None:
        """Every role these settings give someone must be one of the policy file's."""
        known = set(self.roles.names)
        # The bootstrap admin is made with the role `admin` (app._bootstrap_admin).
        if self.bootstrap_admin_username and "admin" not in known:
            raise ValueError("AUTH_BOOTSTRAP_ADMIN_USERNAME: the policy file has no role 'admin'")
        mappings: list[tuple[str, RoleMapping]] = [
            *(("AUTH_OIDC_PROVIDERS", p) for p in self.oidc_providers),
            *(("AUTH_IDJAG_ISSUERS", i) for i in self.idjag_issuers),
        ]
        for setting, mapping in mappings:
            named = set(mapping.default_roles) | {rule.role for rule in mapping.role_rules}
            missing = sorted(named - known)
            if missing:
                raise ValueError(
                    f"{setting}: {mapping.id}: role {missing[0]!r} is not in the policy"
                    f" file's roles ({', '.join(self.roles.names)})"
                )

    def _check_provider(self, provider: OidcProvider | GitHubProvider) -> None:
        where = f"AUTH_OIDC_PROVIDERS: {provider.id}"
        if isinstance(provider, GitHubProvider):
            for url in (provider.authorize_url, provider.token_url, provider.api_url):
                self._check_url(where, url)
        else:
            if not provider.issuer.startswith("https://") and not self.oidc_allow_http:
                raise ValueError(f"{where} issuer must be https")
            if "openid" not in provider.scopes:
                raise ValueError(f"{where} scopes must include openid")
        try:
            _ = provider.secret  # fail at start-up, not at the first sign-in
        except ValueError as exc:
            raise ValueError(f"provider {provider.id}: {exc}") from None
