from __future__ import annotations

import secrets

import pytest
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from bastion_common.settings import Secret, ServiceSettings, check_secret_strength, load_settings


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")

    signing_secret: Secret = Field(description="test secret")


@pytest.mark.parametrize(
    "weak",
    [
        "",
        "short",
        "x" * 31,
        "a" * 64,
        "password" * 5,
        "PasswordPasswordPasswordPassword!",
        "changeme-changeme-changeme-changeme",
        "abcdefghijklmnopqrstuvwxyz",
        "0123456789012345678901234567890123",
        "abababababababababababababababababab",
    ],
)
def test_weak_secrets_are_refused(weak: str) -> None:
    assert check_secret_strength(weak) is not None


def test_a_generated_secret_is_accepted() -> None:
    assert check_secret_strength(secrets.token_urlsafe(32)) is None


def test_settings_with_a_weak_secret_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_SIGNING_SECRET", "secret" * 6)
    with pytest.raises(ValidationError):
        DemoSettings()


def test_a_missing_secret_stops_the_service_with_a_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DEMO_SIGNING_SECRET", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        load_settings(DemoSettings)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "DEMO_SIGNING_SECRET" in err
    assert "required" in err.lower()


def test_the_refusal_message_never_contains_the_weak_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    weak = "hunter2hunter2"
    monkeypatch.setenv("DEMO_SIGNING_SECRET", weak)
    with pytest.raises(SystemExit):
        load_settings(DemoSettings)
    err = capsys.readouterr().err
    assert "DEMO_SIGNING_SECRET" in err
    assert "at least 32 characters" in err
    assert weak not in err


def test_shared_variables_keep_their_unprefixed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_SIGNING_SECRET", secrets.token_urlsafe(32))
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/3")
    monkeypatch.setenv("PORT", "9123")
    settings = DemoSettings()
    assert settings.redis_url == SecretStr("redis://example:6379/3")
    assert settings.port == 9123
    assert "redis://example" not in repr(settings)
