"""Settings of the keys service (environment variables prefixed KEYS_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bastion_common.settings import Secret, ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="KEYS_", extra="ignore", populate_by_name=True)

    service_name: str = "keys"
    hmac_secret: Secret = Field(description="keys the HMAC-SHA256 of stored API keys")
