"""Settings of the tools service (environment variables prefixed TOOLS_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bastion_common.settings import Secret, ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TOOLS_", extra="ignore", populate_by_name=True)

    service_name: str = "tools"
    client_secret: Secret = Field(description="this service's client-credentials secret at auth")
