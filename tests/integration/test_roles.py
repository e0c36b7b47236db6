"""The role x tool matrix of docs/architecture.md, through the running stack, for four real users.

Each user logs in through auth (authorization code + PKCE, login and consent forms),
asks for every permission, and gets a token cut to what its role allows. `tools/list`
must show exactly the allowed tools; every tool call is allowed or refused (HTTP 403,
insufficient_scope) exactly as the table says, and each refusal is in the audit record.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import anyio
import httpx2
import pytest

from bastion_common.permissions import BUILTIN_PERMISSIONS, ROLE_PERMISSIONS
from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp
from tests.integration.oauth import OAuthClient
from tests.integration.test_gateway import GATEWAY_PREFIXES

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
            assert response.status_code == 201, response.text
            out[role] = (username, password)
    return out


@pytest.mark.parametrize("role", ["guest", "user", "premium", "admin"])
async def test_each_role_sees_and_calls_exactly_its_tools(
    stack: Stack, users: dict[str, tuple[str, str]], role: str
) -> None:
    tools_uri = f"{stack.urls['tools']}/mcp"
    client = await OAuthClient.register(stack.urls["auth"], f"matrix-{role}")
    token = await client.token(
        *users[role], resource=tools_uri, scope=" ".join(sorted(BUILTIN_PERMISSIONS))
    )
    allowed = ROLE_PERMISSIONS[role]
    assert set(token["scope"].split()) == set(allowed)
    expected_tools = {t for t, p in TOOL_PERMISSION.items() if p in allowed}

    mcp = McpHttp(tools_uri, token["access_token"])
    async with httpx2.AsyncClient(timeout=15) as http:
        assert (await mcp.initialize(http)).status == 200
        listed = await mcp.list_tools(http)
        names = {t["name"] for t in listed.result["tools"]}
        # Upstream tools behind the gateway have their own matrix (test_gateway.py).
        assert {n for n in names if not n.startswith(GATEWAY_PREFIXES)} == expected_tools
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


async def test_every_refusal_of_the_matrix_is_in_the_audit_record(
    stack: Stack, users: dict[str, tuple[str, str]]
) -> None:
    """Runs after the matrix: each role's refused tools appear as authz.denied events with
    the right principal, tool and outcome, through GET /v1/events and the report tool."""
    client = await OAuthClient.register(stack.urls["auth"], "matrix-auditor")
    audit_token = await client.token(
        *users["admin"], resource=stack.urls["audit"], scope="metrics:view"
    )
    headers = {"Authorization": f"Bearer {audit_token['access_token']}"}
    async with httpx2.AsyncClient(timeout=15) as http:
        for role in ("guest", "user", "premium"):
            username = users[role][0]
            refused = {t for t, p in TOOL_PERMISSION.items() if p not in ROLE_PERMISSIONS[role]}
            seen: set[str] = set()
            with anyio.fail_after(20):
                while seen != refused:
                    page = await http.get(
                        f"{stack.urls['audit']}/v1/events",
                        params={"type": "authz.denied", "principal": username, "limit": 100},
                        headers=headers,
                    )
                    assert page.status_code == 200, page.text
                    events = page.json()["events"]
                    assert all(e["outcome"] == "denied" for e in events)
                    seen = {e["tool"] for e in events}
                    await anyio.sleep(0.3)
        # The same record through the tools server's get_security_audit tool.
        tools_uri = f"{stack.urls['tools']}/mcp"
        token = await client.token(*users["admin"], resource=tools_uri, scope="metrics:view")
        mcp = McpHttp(tools_uri, token["access_token"])
        await mcp.initialize(http)
        reply = await mcp.call_tool(http, "get_security_audit", {"time_range": "1h"})
    assert reply.status == 200 and not reply.result.get("isError"), reply.body
    content = reply.result.get("structuredContent") or json.loads(
        reply.result["content"][0]["text"]
    )
    report = content["report"]  # {"time_range": ..., "report": <audit's report>}
    assert report["counts"]["permission_denials"] >= sum(
        len([t for t, p in TOOL_PERMISSION.items() if p not in ROLE_PERMISSIONS[r]])
        for r in ("guest", "user", "premium")
    )
