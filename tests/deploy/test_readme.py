"""docs/configuration.md names every setting a service reads; the README the two commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from bastion_audit.settings import Settings as AuditSettings
from bastion_auth.settings import Settings as AuthSettings
from bastion_keys.settings import Settings as KeysSettings
from bastion_tools.settings import Settings as ToolsSettings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def env_names(cls: type[BaseSettings]) -> list[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = []
    for name, field in cls.model_fields.items():
        if name in ("service_name", "host"):
            continue  # fixed per service, not configuration
        alias = field.validation_alias
        names.append(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


@pytest.mark.parametrize("cls", [AuthSettings, KeysSettings, ToolsSettings, AuditSettings])
def test_every_setting_is_documented(cls: type[BaseSettings]) -> None:
    missing = [name for name in env_names(cls) if f"`{name}`" not in CONFIGURATION]
    assert missing == []


def test_the_readme_shows_the_two_commands() -> None:
    assert "make up" in README
    assert "make test" in README
