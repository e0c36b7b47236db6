"""Settings of the audit service (environment variables prefixed AUDIT_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bastion_common.settings import Secret, ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AUDIT_", extra="ignore", populate_by_name=True)

    service_name: str = "audit"
    checkpoint_key: Secret = Field(description="seeds the Ed25519 key that signs checkpoints")
    db_path: str = Field(default="audit.sqlite3", description="SQLite file of the audit store")
    consumer_group: str = "audit-collectors"
    consumer_name: str = Field(default="", description="defaults to the host name")
    batch_size: int = Field(default=500, ge=1, le=10_000)
    block_ms: int = Field(default=1000, ge=10, le=60_000)
