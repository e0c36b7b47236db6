"""Settings of the auth service (environment variables prefixed AUTH_)."""

from __future__ import annotations

import ssl
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from bastion_common.permissions import ALL_PERMISSIONS
from bastion_common.settings import Secret, ServiceSettings, check_secret_strength

__all__ = ["Settings"]


class Settings(ServiceSettings):
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

    access_token_ttl: int = Field(default=1800, ge=60, le=86400)
    refresh_token_ttl: int = Field(default=7 * 86400, ge=300)
    code_ttl: int = Field(default=60, ge=10, le=600)
    refresh_grace_seconds: float = Field(default=10.0, ge=0, le=120)
    service_token_ttl: int = Field(default=600, ge=60, le=3600)

    signing_alg: Literal["ES256", "HS256"] = "ES256"
    hs256_secret: SecretStr | None = Field(default=None, description="HS256 mode only")
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

    # Brute force (per account and per client IP, both over `lockout_window`).
    lockout_threshold: int = Field(default=5, ge=1)
    lockout_window: int = Field(default=900, ge=60)
    lockout_base_delay: int = Field(default=30, ge=1)
    lockout_max_delay: int = Field(default=3600, ge=1)
    ip_failure_limit: int = Field(default=50, ge=1)
    # Reverse proxies whose X-Forwarded-For is believed (IPs or CIDRs); empty: none.
    trusted_proxies: list[str] = Field(default_factory=list)

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
            self.tools_resource.rstrip("/"): ALL_PERMISSIONS,
            self.keys_resource.rstrip("/"): ALL_PERMISSIONS,
            self.audit_resource.rstrip("/"): frozenset({"metrics:view"}),
            self.admin_resource: frozenset({"admin:users"}),
        }

    @model_validator(mode="after")
    def _hs256_needs_secret(self) -> Self:
        if self.signing_alg == "HS256":
            if self.hs256_secret is None:
                raise ValueError("AUTH_HS256_SECRET is required when AUTH_SIGNING_ALG=HS256")
            problem = check_secret_strength(self.hs256_secret.get_secret_value())
            if problem:
                raise ValueError(f"AUTH_HS256_SECRET {problem}")
        if self.cimd_ca_file is not None:
            try:
                ssl.create_default_context(cafile=self.cimd_ca_file)
            except (OSError, ssl.SSLError):
                raise ValueError("AUTH_CIMD_CA_FILE is not a readable PEM CA file") from None
        if self.tools_client_secret is not None:
            problem = check_secret_strength(self.tools_client_secret.get_secret_value())
            if problem:
                raise ValueError(f"AUTH_TOOLS_CLIENT_SECRET {problem}")
        return self
