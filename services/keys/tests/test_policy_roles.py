"""keys takes its roles and permissions from the policy file (BASTION_POLICY_FILE).

A key may hold an upstream's permission the file offers (`time:read`) when the caller's
role, as the file defines it, holds it; a permission the file does not offer is unknown,
and one the caller's role lacks is refused: you can only delegate what you hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx2
import pytest
from fastapi import FastAPI
from services.keys.tests.helpers import (
    TOOLS_RESOURCE,
    StandInAuth,
    bearer,
    create_key,
    exchange,
    serve,
)

from bastion_common.permissions import BUILTIN_PERMISSIONS
from bastion_keys.settings import Settings

pytestmark = pytest.mark.anyio

POLICY = """
roles:
  admin: {permissions: [admin:users]}
  timekeeper: {permissions: [time:read]}
mcpServers:
  time: {url: "http://time:3002/mcp", headers: {X-Api-Key: "${env:NOT_SET_IN_KEYS}"}}
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
async def keys_with_policy(
    make_app: Callable[..., FastAPI], policy: Path
) -> AsyncIterator[httpx2.AsyncClient]:
    async with serve(make_app(policy_file=str(policy))) as client:
        yield client


def test_the_tools_resource_offers_the_file_s_permissions(
    make_settings: Callable[..., Settings], policy: Path
) -> None:
    assert make_settings().offered_scopes() == {TOOLS_RESOURCE: BUILTIN_PERMISSIONS}
    offered = make_settings(policy_file=str(policy)).offered_scopes()[TOOLS_RESOURCE]
    assert offered == BUILTIN_PERMISSIONS | {"time:read", "time:write"}


async def test_a_role_only_the_file_defines_delegates_its_upstream_permission(
    keys_with_policy: httpx2.AsyncClient, auth: StandInAuth
) -> None:
    token = auth.token(scope="time:read", roles=["timekeeper"])
    made = await create_key(keys_with_policy, token, ["time:read"])
    reply = await exchange(keys_with_policy, made["api_key"])
    assert reply.status_code == 200, reply.text
    assert reply.json()["scope"] == "time:read"


async def test_a_permission_the_caller_s_file_role_lacks_is_refused(
    keys_with_policy: httpx2.AsyncClient, auth: StandInAuth
) -> None:
    # The token says time:write, but the file's timekeeper does not hold it.
    token = auth.token(scope="time:read time:write", roles=["timekeeper"])
    reply = await keys_with_policy.post(
        "/v1/keys", json={"name": "x", "permissions": ["time:write"]}, headers=bearer(token)
    )
    assert reply.status_code == 403 and reply.json()["error"] == "insufficient_scope"
    # A built-in role the file does not define holds nothing here.
    premium = auth.token(scope="weather:read", roles=["premium"])
    refused = await keys_with_policy.post(
        "/v1/keys", json={"name": "x", "permissions": ["weather:read"]}, headers=bearer(premium)
    )
    assert refused.status_code == 403
    assert (await keys_with_policy.get("/v1/keys", headers=bearer(token))).json() == []


async def test_a_permission_nothing_offers_is_unknown(
    keys_with_policy: httpx2.AsyncClient, auth: StandInAuth
) -> None:
    token = auth.token(scope="time:read", roles=["timekeeper"])
    reply = await keys_with_policy.post(
        "/v1/keys", json={"name": "x", "permissions": ["time:reed"]}, headers=bearer(token)
    )
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_request"
    assert "unknown permissions: ['time:reed']" in reply.json()["error_description"]
