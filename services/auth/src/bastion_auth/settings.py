"""Settings of the auth service (environment variables prefixed AUTH_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bastion_common.settings import Secret, ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore", populate_by_name=True)

    service_name: str = "auth"
    key_encryption_key: Secret = Field(description="encrypts signing keys at rest")
    session_secret: Secret = Field(description="signs login sessions and CSRF tokens")
