"""Who becomes what when a person signs in through a provider, and what a provider
configuration must say before the service starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from services.auth.tests.helpers import make_settings

from bastion_auth.linking import roles_for
from bastion_auth.settings import OidcProvider


def _provider(**overrides: Any) -> OidcProvider:
    values: dict[str, Any] = {
        "id": "corp",
        "name": "Corp SSO",
        "issuer": "https://sso.corp.example",
        "client_id": "bastion",
        "client_secret_env": "CORP_SSO_SECRET",
        "role_rules": [{"claim": "groups", "value": "premium-users", "role": "premium"}],
    }
    values.update(overrides)
    return OidcProvider(**values)


def test_roles_come_from_claims_on_top_of_the_defaults() -> None:
    provider = _provider()
    assert roles_for(provider, {"groups": ["premium-users", "x"]}) == [
        "premium",
        "user",
    ]
    assert roles_for(provider, {"groups": ["x"]}) == ["user"]
    # A claim that is a string, not a list, still matches exactly, never by substring.
    assert roles_for(provider, {"groups": "premium-users-old"}) == ["user"]


def test_the_allowlist_keeps_out_unverified_emails_and_other_groups() -> None:
    provider = _provider(allowed_email_domains=["corp.example"], allowed_groups=["staff"])
    ok_email = {"email": "a@corp.example", "email_verified": True}
    assert roles_for(provider, ok_email) == ["user"]
    assert roles_for(provider, {"email": "a@corp.example"}) is None  # unverified
    assert roles_for(provider, {"email": "a@corp.example.evil", "email_verified": True}) is None
    assert roles_for(provider, {"groups": ["staff"]}) == ["user"]
    assert roles_for(provider, {"groups": ["contractors"]}) is None


def test_an_admin_role_can_only_come_from_an_explicit_rule() -> None:
    provider = _provider(default_roles=["guest"])
    assert roles_for(provider, {"roles": ["admin"], "groups": ["admin"]}) == ["guest"]


def test_a_provider_needs_its_secret_https_and_openid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_url = "redis://127.0.0.1:1/0"
    provider = _provider().model_dump()
    with pytest.raises(ValidationError, match="CORP_SSO_SECRET is not set"):
        make_settings(redis_url, tmp_path, oidc_providers=[provider])
    monkeypatch.setenv("CORP_SSO_SECRET", "s3cret-from-the-vault")
    assert make_settings(redis_url, tmp_path, oidc_providers=[provider]).oidc_providers
    with pytest.raises(ValidationError, match="must be https"):
        make_settings(
            redis_url, tmp_path, oidc_providers=[{**provider, "issuer": "http://sso.example"}]
        )
    with pytest.raises(ValidationError, match="openid"):
        make_settings(redis_url, tmp_path, oidc_providers=[{**provider, "scopes": ["email"]}])
    with pytest.raises(ValidationError, match="unique"):
        make_settings(redis_url, tmp_path, oidc_providers=[provider, provider])
    with pytest.raises(ValidationError, match="AUTH_LOCAL_LOGIN"):
        make_settings(redis_url, tmp_path, local_login=False)
    with pytest.raises(ValidationError):
        make_settings(redis_url, tmp_path, oidc_providers=[{**provider, "client_secret": "x"}])
