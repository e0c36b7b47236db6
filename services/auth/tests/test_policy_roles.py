"""auth takes its roles from the policy file (BASTION_POLICY_FILE, docs/gateway.md "Roles").

A role only the file defines (`timekeeper`, holding an upstream's `time:read`) can be
given by the admin and signed in with; its tokens carry exactly what the file says; an
unknown role is refused with a clear 400 and changes nothing; settings naming a role the
file lacks, and a broken file, stop the service.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from services.auth.tests.helpers import ADMIN, KEYS, TOOLS, Harness, harness, make_settings

from bastion_auth.resources import grant_scopes
from bastion_common.permissions import BUILTIN_PERMISSIONS, ROLE_PERMISSIONS

POLICY = """
roles:
  admin: {permissions: [admin:users, weather:read, time:read, time:write]}
  timekeeper: {permissions: [time:read], rate_limit: {capacity: 10, refill_per_second: 1}}
mcpServers:
  time:
    url: http://time:3002/mcp
    headers: {X-Api-Key: "${env:NOT_SET_IN_AUTH}"}
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
async def hp(redis_url: str, tmp_path: Path, policy: Path) -> AsyncIterator[Harness]:
    async with harness(make_settings(redis_url, tmp_path, policy_file=str(policy))) as value:
        yield value


def test_without_a_policy_file_the_built_in_roles_are_unchanged(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, tmp_path)
    assert dict(settings.roles.permissions) == ROLE_PERMISSIONS
    assert settings.resources[TOOLS] == BUILTIN_PERMISSIONS
    assert grant_scopes(settings, TOOLS, None, roles=["premium"]) == sorted(
        ROLE_PERMISSIONS["premium"]
    )


def test_the_file_s_upstream_permissions_are_offered_and_granted_by_role(
    redis_url: str, tmp_path: Path, policy: Path
) -> None:
    # The upstream's header secret is not in auth's environment: auth never resolves it.
    settings = make_settings(redis_url, tmp_path, policy_file=str(policy))
    assert {"time:read", "time:write"} <= settings.resources[TOOLS]
    assert settings.resources[KEYS] == settings.resources[TOOLS]
    assert grant_scopes(
        settings, TOOLS, "time:read time:write weather:read", roles=["timekeeper"]
    ) == ["time:read"]
    assert grant_scopes(settings, TOOLS, None, roles=["user"]) == []  # not a role of this file


@pytest.mark.anyio
async def test_the_admin_gives_a_role_only_the_file_defines_and_its_token_carries_it(
    hp: Harness,
) -> None:
    admin = await hp.tokens(resource=ADMIN, scope="admin:users")
    headers = {"authorization": f"Bearer {admin['access_token']}"}
    created = await hp.client.post(
        "/admin/users",
        headers=headers,
        json={"username": "tk", "password": "tk-password-123", "roles": ["timekeeper"]},
    )
    assert created.status_code == 201 and created.json()["roles"] == ["timekeeper"]
    hp.client.cookies.clear()
    token = await hp.tokens(
        resource=TOOLS, scope="time:read time:write weather:read", username="tk",
        password="tk-password-123",
    )  # fmt: skip
    assert token["scope"] == "time:read"


@pytest.mark.anyio
async def test_an_unknown_role_is_refused_with_a_clear_400_and_nothing_changes(
    hp: Harness,
) -> None:
    admin = await hp.tokens(resource=ADMIN, scope="admin:users")
    headers = {"authorization": f"Bearer {admin['access_token']}"}
    await hp.ctx.users.create("tk", "tk-password-123", ["timekeeper"])
    made = await hp.client.post(
        "/admin/users",
        headers=headers,
        # `user` is a built-in role, but not one of this file's.
        json={"username": "eve", "password": "eve-password-123", "roles": ["user"]},
    )
    changed = await hp.client.patch(
        "/admin/users/tk", headers=headers, json={"roles": ["timekeeper", "astronaut"]}
    )
    for refused, role in ((made, "user"), (changed, "astronaut")):
        assert refused.status_code == 400, refused.text
        body = refused.json()
        assert body["error"] == "invalid_request"
        assert f"unknown role '{role}'" in body["error_description"]
        assert "admin, timekeeper" in body["error_description"]
    assert await hp.ctx.users.get("eve") is None
    still = await hp.ctx.users.get("tk")
    assert still is not None and still.roles == ["timekeeper"]
    events = await hp.all_events()
    assert not [e for e in events if e["type"] == "user.created" and e.get("username") == "eve"]


def test_a_provider_rule_naming_a_role_the_file_lacks_stops_the_settings(
    redis_url: str, tmp_path: Path, policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORP_SECRET", "corp-" + "Vb7Lq2Zx9Wm4Rt1Yn6Hc3Kd8Fg5Js0Ae")
    provider = {
        "id": "corp", "name": "Corp", "issuer": "https://idp.example.com", "client_id": "b",
        "client_secret_env": "CORP_SECRET", "default_roles": ["timekeeper"],
        "role_rules": [{"claim": "groups", "value": "x", "role": "premium"}],
    }  # fmt: skip
    with pytest.raises(ValidationError) as caught:
        make_settings(redis_url, tmp_path, policy_file=str(policy), oidc_providers=[provider])
    assert (
        "AUTH_OIDC_PROVIDERS: corp: role 'premium' is not in the policy file's roles"
        " (admin, timekeeper)" in str(caught.value)
    )


def test_a_file_without_the_bootstrap_admin_s_role_stops_the_settings(
    redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("roles:\n  guest: {permissions: [weather:read]}\n")
    with pytest.raises(ValidationError) as caught:
        make_settings(redis_url, tmp_path, policy_file=str(path))
    assert "the policy file has no role 'admin'" in str(caught.value)


def test_auth_does_not_start_with_a_bad_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "roles:\n"
        "  admin: {permissions: [admin:users, time:reed]}\n"
        "  Bad: {permissions: [weather:read]}\n"
        "mcpServers:\n  time: {url: 'http://time/mcp'}\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "AUTH_KEY_ENCRYPTION_KEY": "kek-" + "Hq7Lp2Wx9Zm4Rt6Yb1Nc8Vd3Fg5Js0Ae",
        "AUTH_SESSION_SECRET": "ses-" + "Pw4Zr8Lq1Xm6Tn3Vb9Hc2Kd7Fg5Js0Ae",
        "AUTH_SPOOL_DIR": str(tmp_path / "spool"),
        "BASTION_POLICY_FILE": str(path),
    }
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bastion_auth"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "BASTION_POLICY_FILE: the policy file is invalid:" in done.stderr
    assert f"{path}: roles.Bad.[key]: String should match pattern" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
