"""Settings shared by every service: loaded from the environment, validated at start-up.

Each service subclasses `ServiceSettings` with its own `env_prefix` (AUTH_, KEYS_, ...).
Variables every service reads the same way (REDIS_URL, LOG_LEVEL) keep one name without
a prefix. A missing or weak secret raises at construction, so a misconfigured service
stops before it serves anything (`load_settings` turns that into one readable line).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from typing import Annotated, Self, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bastion_common.clientip import parse_networks
from bastion_common.permissions import DEFAULT_ROLES, RoleTable
from bastion_common.policyfile import PolicyError, load_policy

__all__ = [
    "POLICY_FILE_SETTING",
    "PolicySettings",
    "Secret",
    "ServiceSettings",
    "check_secret_strength",
    "load_settings",
    "policy_file_problems",
]

MIN_SECRET_LENGTH = 32

# Words and patterns that show a secret was typed by a person rather than generated.
_COMMON_WORDS = frozenset(
    {
        "password",
        "passw0rd",
        "secret",
        "changeme",
        "change-me",
        "change_me",
        "admin",
        "default",
        "letmein",
        "qwerty",
        "welcome",
        "example",
        "test",
        "testing",
        "dummy",
        "token",
        "key",
        "mysecret",
        "supersecret",
        "bastion",
        "redis",
        "root",
        "master",
        "iloveyou",
        "monkey",
        "dragon",
        "abc123",
        "123456",
        "12345678",
        "0123456789",
        "abcdefghijklmnopqrstuvwxyz",
    }
)


def _entropy_bits_per_char(value: str) -> float:
    counts = Counter(value)
    total = len(value)
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def check_secret_strength(value: str) -> str | None:
    """Return why `value` is too weak to be a secret, or None when it is acceptable."""
    if len(value) < MIN_SECRET_LENGTH:
        return f"must be at least {MIN_SECRET_LENGTH} characters (got {len(value)})"
    lowered = value.lower()
    stripped = "".join(ch for ch in lowered if ch.isalnum())
    for word in _COMMON_WORDS:
        # A common word repeated or padded to length is still a common word.
        if stripped and (stripped == word or stripped.replace(word, "") == ""):
            return "is a common word or a repetition of one; generate a random value"
    if len(set(value)) < 12 or _entropy_bits_per_char(value) < 3.0:
        return "has too little variety to be random; generate a random value"
    return None


def _validate_secret(value: SecretStr) -> SecretStr:
    problem = check_secret_strength(value.get_secret_value())
    if problem:
        raise ValueError(f"secret {problem}")
    return value


Secret = Annotated[SecretStr, AfterValidator(_validate_secret)]
"""A SecretStr that must look generated: long enough and not a word."""


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set `env_prefix` in their model_config."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    service_name: str = "bastion"
    host: str = "0.0.0.0"  # noqa: S104 - inside a container; compose publishes on 127.0.0.1
    port: int = Field(default=8000, ge=1, le=65535, validation_alias="PORT")
    redis_url: SecretStr = Field(
        default=SecretStr("redis://localhost:6379/0"), validation_alias="REDIS_URL"
    )
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    spool_dir: str = Field(default=".spool", validation_alias="BASTION_SPOOL_DIR")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="reverse proxies whose X-Forwarded-For is believed (IPs or CIDRs);"
        " empty: none (bastion_common.clientip)",
    )
    event_key: Secret | None = Field(
        default=None,
        validation_alias="BASTION_EVENT_KEY",
        description="signs this service's audit stream entries (bastion_common.eventsign);"
        " without it the collector stores them flagged as unverified",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # a typo must stop the service, not trust nobody silently
        return value


POLICY_FILE_SETTING = "BASTION_POLICY_FILE"


class PolicySettings(ServiceSettings):
    """A service that reads its roles from the policy file (auth, keys; tools reads the
    whole file in its `__main__`). The file is read once, here, without resolving the
    upstreams' secret references: only `tools` ever holds those."""

    policy_file: str | None = Field(
        default=None,
        validation_alias=POLICY_FILE_SETTING,
        description="the policy file (docs/gateway.md): roles, permissions, upstreams;"
        " unset: the built-in roles",
    )
    _roles: RoleTable = PrivateAttr(default=DEFAULT_ROLES)

    @model_validator(mode="after")
    def _load_roles(self) -> Self:
        if self.policy_file is not None:
            try:
                policy = load_policy(self.policy_file, resolve_secrets=False)
            except PolicyError as exc:
                raise ValueError(policy_file_problems(exc)) from None
            self._roles = policy.role_table
        return self

    @property
    def roles(self) -> RoleTable:
        """Role -> permissions and rate limit, and every permission offered."""
        return self._roles


def policy_file_problems(exc: PolicyError) -> str:
    """The message a service stops with when its policy file is invalid."""
    return f"{POLICY_FILE_SETTING}: the policy file is invalid:\n" + "\n".join(
        f"  {line}" for line in exc.problems
    )


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Build settings from the environment or exit with one clear line per problem."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            if not field:  # a check across fields names its own settings
                lines.append("  " + str(error["msg"]).removeprefix("Value error, "))
                continue
            env = field.upper() if field.isupper() else f"{prefix}{field}".upper()
            lines.append(f"  {env}: {error['msg']}")
        sys.stderr.write(f"{cls.__name__}: configuration is invalid:\n" + "\n".join(lines) + "\n")
        raise SystemExit(2) from None
