"""Settings of the tools service (environment variables prefixed TOOLS_).

URLs come in two kinds: the public ones (what tokens name as `iss` and `aud`, as clients
see them) and the internal ones (how this container reaches the other services). The
canonical resource URI of this server is `public_url` + `mcp_path`.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from bastion_common.settings import POLICY_FILE_SETTING, Secret, ServiceSettings

__all__ = ["Settings"]

DEFAULT_TOOL_COSTS: dict[str, int] = {
    "get_weather": 1,
    "report_weather": 2,
    "list_files": 1,
    "read_file": 1,
    "write_file": 5,
    "delete_file": 5,
    "list_users": 5,
    "get_security_audit": 10,
}


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOOLS_", extra="ignore", populate_by_name=True, frozen=True
    )

    service_name: str = "tools"
    client_id: str = "bastion-tools"
    client_secret: Secret = Field(description="this service's client-credentials secret at auth")

    public_url: str = "http://localhost:8003"
    mcp_path: str = "/mcp"

    auth_issuer: str = "http://localhost:8001"
    auth_internal_url: str = "http://localhost:8001"
    auth_jwks_path: str = "/jwks.json"
    keys_issuer: str | None = "http://localhost:8002"
    keys_internal_url: str = "http://localhost:8002"
    keys_jwks_path: str = "/jwks.json"
    audit_internal_url: str = "http://localhost:8004"
    audit_resource: str = "http://localhost:8004"
    # Refused when set (HS256 mode is not supported, see `_no_shared_secret`).
    token_shared_secret: SecretStr | None = None

    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["localhost:*", "127.0.0.1:*", "[::1]:*", "tools:*", "tools"]
    )
    allowed_origins: list[str] = Field(
        default_factory=lambda: ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"]
    )

    sandbox_root: str = "./sandbox"
    sandbox_quota_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1, description="total size of the files in the sandbox"
    )
    file_extensions: list[str] = Field(default_factory=lambda: [".txt", ".md", ".json", ".csv"])
    max_file_bytes: int = Field(default=1024 * 1024, ge=1, le=16 * 1024 * 1024)

    # Rate limits: role -> [capacity, refill per second]; empty means the defaults in
    # docs/architecture.md.
    rate_limits: dict[str, tuple[int, float]] = Field(default_factory=dict)
    tool_costs: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_TOOL_COSTS))
    # Bucket for unauthenticated / failed attempts per client IP, in front of authentication.
    ip_capacity: int = Field(default=30, ge=1)
    ip_refill_per_second: float = Field(default=1.0, gt=0)

    # An unknown `kid` triggers at most one JWKS fetch per issuer per this many seconds.
    jwks_refetch_interval: float = Field(default=5.0, ge=0.05, le=300)
    # Audit events are handed to the publisher in batches at most this old (0: one by one).
    audit_linger_seconds: float = Field(default=0.02, ge=0, le=1)
    apikey_cache_seconds: float = Field(default=1.0, ge=0, le=5)
    stateless_http: bool = False
    json_response: bool = True
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    upstream_timeout: float = Field(default=5.0, gt=0, le=30)
    # The policy file (docs/gateway.md): roles, MCP servers behind the gateway and their
    # tool rules; the same file auth and keys read. Unset: the built-in roles and tools
    # only. TOOLS_POLICY_FILE, its name before auth and keys read it, still works.
    policy_file: str | None = Field(
        default=None,
        validation_alias=AliasChoices(POLICY_FILE_SETTING, "TOOLS_POLICY_FILE", "policy_file"),
    )
    # At start-up, how long the MCP endpoint waits for upstreams to be listed before it
    # serves (the built-in tools) anyway; upstreams that come later are listed then.
    gateway_settle_seconds: float = Field(default=5.0, ge=0, le=60)
    # Local (stdio) upstreams: each process gets its own directory under this root, and
    # this PATH (docs/gateway.md, "Local servers").
    stdio_root: str = "/stdio"
    stdio_path: str = "/opt/stdio/bin:/usr/local/bin:/usr/bin:/bin"

    @property
    def resource_uri(self) -> str:
        """RFC 8707 canonical URI of this MCP server: the audience its tokens must carry."""
        return self.public_url.rstrip("/") + self.mcp_path

    @property
    def resource_metadata_url(self) -> str:
        """RFC 9728 §3.1: the well-known path is inserted before the resource's path."""
        return f"{self.public_url.rstrip('/')}/.well-known/oauth-protected-resource{self.mcp_path}"

    @property
    def admin_resource(self) -> str:
        return self.auth_issuer.rstrip("/") + "/admin"

    @field_validator("public_url", "auth_issuer", "auth_internal_url", "keys_internal_url",
                     "audit_internal_url", "audit_resource")  # fmt: skip
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("tool_costs")
    @classmethod
    def _costs_positive(cls, value: dict[str, int]) -> dict[str, int]:
        if any(cost < 1 for cost in value.values()):
            raise ValueError("tool costs must be at least 1")
        return {**DEFAULT_TOOL_COSTS, **value}

    @field_validator("token_shared_secret")
    @classmethod
    def _no_shared_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # A secret shared with auth would let tools mint tokens for any audience, and keys
        # and audit would refuse the tokens it checks anyway: ES256 from auth's JWKS only.
        if value is not None:
            raise ValueError(
                "HS256 mode is not supported: auth tokens are ES256, checked against auth's"
                " JWKS. Unset TOOLS_TOKEN_SHARED_SECRET."
            )
        return value
