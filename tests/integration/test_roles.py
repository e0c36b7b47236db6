"""The role x tool matrix of DESIGN.md, through the running stack, for four real users.

Each user logs in through auth (authorization code + PKCE, login and consent forms),
asks for every permission, and gets a token cut to what its role allows. `tools/list`
must show exactly the allowed tools; every tool call is allowed or refused (HTTP 403,
insufficient_scope) exactly as the table says, and each refusal is in the audit record.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx2
import pytest

from bastion_common.permissions import ALL_PERMISSIONS, ROLE_PERMISSIONS
from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp
from tests.integration.oauth import OAuthClient

pytestmark = pytest.mark.anyio

TOOL_PERMISSION = {
    "get_weather": "weather:read",
    "report_weather": "weather:write",
    "list_files": "files:read",
    "read_file": "files:read",
    "write_file": "files:write",
    "delete_file": "files:delete",
    "list_users": "admin:users",
    "get_security_audit": "metrics:view",
}


def tool_arguments(role: str) -> dict[str, dict[str, Any]]:
    name = f"matrix-{role}.txt"
    return {
        "get_weather": {"city": "Paris"},
        "report_weather": {"city": "Paris", "temperature_c": 12.5, "condition": "cloudy"},
        "list_files": {"directory": "."},
        "read_file": {"path": name},
        "write_file": {"path": name, "content": "hello"},
        "delete_file": {"path": name},
        "list_users": {},
        "get_security_audit": {"time_range": "1h"},
    }


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def users(stack: Stack) -> dict[str, tuple[str, str]]:
    """One user per role (admin is the bootstrap admin), created through the admin API."""
    admin = (stack.env["BOOTSTRAP_ADMIN_USERNAME"], stack.env["BOOTSTRAP_ADMIN_PASSWORD"])
    client = await OAuthClient.register(stack.urls["auth"], "matrix-admin")
    admin_token = await client.token(
        *admin, resource=f"{stack.urls['auth']}/admin", scope="admin:users"
    )
    out = {"admin": admin}
    async with httpx2.AsyncClient(timeout=10) as http:
        for role in ("guest", "user", "premium"):
            username = f"{role}-{secrets.token_hex(3)}"
            password = secrets.token_urlsafe(16)
            response = await http.post(
                f"{stack.urls['auth']}/admin/users",
                json={"username": username, "password": password, "roles": [role]},
                headers={"Authorization": f"Bearer {admin_token['access_token']}"},
            )
            assert response.status_code in (200, 201), response.text
            out[role] = (username, password)
    return out


@pytest.mark.parametrize("role", ["guest", "user", "premium", "admin"])
async def test_each_role_sees_and_calls_exactly_its_tools(
    stack: Stack, users: dict[str, tuple[str, str]], role: str
) -> None:
    tools_uri = f"{stack.urls['tools']}/mcp"
    client = await OAuthClient.register(stack.urls["auth"], f"matrix-{role}")
    token = await client.token(
        *users[role], resource=tools_uri, scope=" ".join(sorted(ALL_PERMISSIONS))
    )
    allowed = ROLE_PERMISSIONS[role]
    assert set(token["scope"].split()) == set(allowed)
    expected_tools = {t for t, p in TOOL_PERMISSION.items() if p in allowed}

    mcp = McpHttp(tools_uri, token["access_token"])
    async with httpx2.AsyncClient(timeout=15) as http:
        assert (await mcp.initialize(http)).status == 200
        listed = await mcp.list_tools(http)
        assert {t["name"] for t in listed.result["tools"]} == expected_tools
        for tool, arguments in tool_arguments(role).items():
            reply = await mcp.call_tool(http, tool, arguments)
            if tool in expected_tools:
                assert reply.status == 200, (role, tool, reply.status)
                assert reply.error is None, (role, tool, reply.error)
            else:
                assert reply.status == 403, (role, tool, reply.status)
                challenge = reply.headers["www-authenticate"]
                assert 'error="insufficient_scope"' in challenge
                assert TOOL_PERMISSION[tool] in challenge
                assert "resource_metadata=" in challenge
