"""Settings of the keys service (environment variables prefixed KEYS_)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from bastion_common.settings import PolicySettings, Secret

__all__ = ["Settings"]


class Settings(PolicySettings):
    model_config = SettingsConfigDict(
        env_prefix="KEYS_", extra="ignore", populate_by_name=True, frozen=True
    )

    service_name: str = "keys"
    hmac_secret: Secret = Field(description="keys the HMAC-SHA256 of stored API keys")
    key_encryption_key: Secret = Field(
        description="encrypts the ES256 signing key at rest in Redis (shared by replicas)"
    )
    public_url: str = Field(
        default="http://localhost:8002",
        description="canonical URI: this service's RFC 8707 resource and its issuer",
    )
    auth_issuer: str = Field(default="http://localhost:8001", description="trusted issuer")
    auth_internal_url: str = Field(
        default="http://localhost:8001", description="where auth's JWKS is fetched from"
    )
    auth_jwks_path: str = "/jwks.json"
    tools_resource: str = "http://localhost:8003/mcp"
    resource_scopes: dict[str, list[str]] | None = Field(
        default=None,
        description="JSON object resource -> scopes it offers; replaces the default (tools"
        " only). List only resources that trust this issuer",
    )
    introspection_clients: list[str] = Field(
        default=["bastion-tools"],
        description="client_ids of service tokens allowed to call /v1/introspect",
    )
    admin_role: str = "admin"

    token_ttl_seconds: int = Field(default=900, ge=30, le=3600)
    default_expiry_days: int = Field(default=90, ge=1)
    max_expiry_days: int = Field(default=365, ge=1, le=3650)
    rotation_overlap_seconds: int = Field(default=24 * 3600, ge=0, le=30 * 24 * 3600)
    name_max_length: int = Field(default=64, ge=1, le=256)
    max_keys_per_owner: int = Field(default=50, ge=1)
    failed_presentations_per_ip: int = Field(default=20, ge=1)
    failed_presentation_window_seconds: int = Field(default=60, ge=1)
    usage_flush_seconds: float = Field(default=5.0, gt=0, le=300)

    @field_validator("public_url", "auth_issuer", "auth_internal_url", "tools_resource")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.default_expiry_days > self.max_expiry_days:
            raise ValueError("default_expiry_days must not exceed max_expiry_days")
        for resource, scopes in (self.resource_scopes or {}).items():
            unknown = set(scopes) - self.roles.offered
            if unknown:
                raise ValueError(f"resource {resource} offers unknown scopes {sorted(unknown)}")
        return self

    def offered_scopes(self) -> dict[str, frozenset[str]]:
        """Each resource a key may be exchanged for, with the scopes it offers
        (docs/architecture.md). By default only the tools server: it is the one resource
        that trusts this issuer (TOOLS_KEYS_ISSUER); keys itself, audit and auth's admin
        API accept only auth's tokens, so a token for them would be refused there anyway.
        Any other resource is refused with invalid_target (RFC 8707 §2)."""
        if self.resource_scopes is not None:
            return {r.rstrip("/"): frozenset(s) for r, s in self.resource_scopes.items()}
        return {self.tools_resource: self.roles.offered}
