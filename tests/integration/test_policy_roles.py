"""Roles come from the policy file: a role only deploy/upstreams/policy.test.yaml defines.

`timekeeper` holds `time:read` and nothing else; no built-in role or constant knows it.
Through the running stack (auth, keys and tools each reading the same mounted file): the
admin gives the role through the admin API (an unknown role is refused with a 400 that
names it, and nothing is written), its user signs in and the token carries exactly
`time:read`, `tools/list` shows exactly the time server's read tools, other upstream
tools are refused with the 403 step-up naming the upstream's own permission, and keys
lets the user delegate `time:read` but nothing else.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx2
import pytest

from bastion_common.policyfile import load_policy
from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp
from tests.integration.oauth import OAuthClient
from tests.integration.test_gateway import TIME, _wait_ready

pytestmark = pytest.mark.anyio

POLICY = load_policy(
    Path(__file__).parents[2] / "deploy" / "upstreams" / "policy.test.yaml", resolve_secrets=False
)
EVERY_SCOPE = " ".join(sorted(POLICY.role_table.offered))


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def admin_api(stack: Stack) -> str:
    admin = (stack.env["BOOTSTRAP_ADMIN_USERNAME"], stack.env["BOOTSTRAP_ADMIN_PASSWORD"])
    client = await OAuthClient.register(stack.urls["auth"], "roles-admin")
    body = await client.token(*admin, resource=f"{stack.urls['auth']}/admin", scope="admin:users")
    return str(body["access_token"])


@pytest.fixture(scope="module")
async def timekeeper(stack: Stack, admin_api: str) -> tuple[str, str]:
    """A user made a timekeeper by the admin: created as a guest, then given the role."""
    username, password = f"tk-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    headers = {"Authorization": f"Bearer {admin_api}"}
    async with httpx2.AsyncClient(timeout=10) as http:
        created = await http.post(
            f"{stack.urls['auth']}/admin/users",
            json={"username": username, "password": password, "roles": ["guest"]},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        changed = await http.patch(
            f"{stack.urls['auth']}/admin/users/{username}",
            json={"roles": ["timekeeper"]},
            headers=headers,
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["roles"] == ["timekeeper"]
    return username, password


async def test_an_unknown_role_is_refused_by_the_admin_api_and_nothing_is_written(
    stack: Stack, admin_api: str, timekeeper: tuple[str, str]
) -> None:
    headers = {"Authorization": f"Bearer {admin_api}"}
    username = f"astro-{secrets.token_hex(3)}"
    async with httpx2.AsyncClient(timeout=10) as http:
        created = await http.post(
            f"{stack.urls['auth']}/admin/users",
            json={"username": username, "password": secrets.token_urlsafe(16),
                  "roles": ["astronaut"]},
            headers=headers,
        )  # fmt: skip
        changed = await http.patch(
            f"{stack.urls['auth']}/admin/users/{timekeeper[0]}",
            json={"roles": ["timekeeper", "astronaut"]},
            headers=headers,
        )
        listed = (await http.get(f"{stack.urls['auth']}/admin/users", headers=headers)).json()
    for refused in (created, changed):
        assert refused.status_code == 400, refused.text
        assert "astronaut" in refused.text and "timekeeper" in refused.text  # names both
        assert "Traceback" not in refused.text
    users = {u["username"]: u for u in (listed["users"] if isinstance(listed, dict) else listed)}
    assert username not in users
    assert users[timekeeper[0]]["roles"] == ["timekeeper"]


async def test_a_role_only_the_policy_file_defines_gets_exactly_its_upstream_tools(
    stack: Stack, timekeeper: tuple[str, str]
) -> None:
    await _wait_ready(stack, "time")
    await _wait_ready(stack, "everything")
    tools_uri = f"{stack.urls['tools']}/mcp"
    client = await OAuthClient.register(stack.urls["auth"], "roles-timekeeper")
    token = await client.token(*timekeeper, resource=tools_uri, scope=EVERY_SCOPE)
    assert token["scope"] == "time:read"

    mcp = McpHttp(tools_uri, token["access_token"])
    async with httpx2.AsyncClient(timeout=15) as http:
        assert (await mcp.initialize(http)).status == 200
        listed = {t["name"] for t in (await mcp.list_tools(http)).result["tools"]}
        assert listed == TIME  # no built-in tool, no other upstream's
        ok = await mcp.call_tool(http, "time_get_current_time", {"timezone": "Europe/Paris"})
        assert ok.status == 200 and ok.error is None and not ok.result.get("isError"), ok
        for tool, arguments, permission in (
            ("ev_toggle-simulated-logging", {}, "ev:write"),
            ("ev_echo", {"message": "hi"}, "ev:read"),
            ("get_weather", {"city": "Paris"}, "weather:read"),
        ):
            refused = await mcp.call_tool(http, tool, arguments)
            assert refused.status == 403, (tool, refused.status)
            challenge = refused.headers["www-authenticate"]
            assert 'error="insufficient_scope"' in challenge, challenge
            assert permission in challenge, (tool, challenge)


async def test_the_resource_offers_what_the_file_offers(stack: Stack) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        document = (
            await http.get(f"{stack.urls['tools']}/.well-known/oauth-protected-resource/mcp")
        ).json()
    assert set(document["scopes_supported"]) == set(POLICY.role_table.offered)
    assert {"time:read", "ev:env"} <= set(document["scopes_supported"])


async def test_keys_lets_the_role_delegate_its_upstream_permission_and_nothing_more(
    stack: Stack, timekeeper: tuple[str, str]
) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "roles-timekeeper-keys")
    token = await client.token(*timekeeper, resource=stack.urls["keys"], scope=EVERY_SCOPE)
    assert token["scope"] == "time:read"
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    async with httpx2.AsyncClient(timeout=10) as http:
        made = await http.post(
            f"{stack.urls['keys']}/v1/keys",
            json={"name": "clock", "permissions": ["time:read"]},
            headers=headers,
        )
        beyond = await http.post(
            f"{stack.urls['keys']}/v1/keys",
            json={"name": "more", "permissions": ["time:read", "ev:read"]},
            headers=headers,
        )
        unknown = await http.post(
            f"{stack.urls['keys']}/v1/keys",
            json={"name": "typo", "permissions": ["time:reed"]},
            headers=headers,
        )
        exchanged = await http.post(
            f"{stack.urls['keys']}/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": made.json()["api_key"],
                "subject_token_type": "urn:mcp-secure:api-key",
                "resource": f"{stack.urls['tools']}/mcp",
            },
        )
    assert made.status_code == 201, made.text
    assert beyond.status_code == 403 and "ev:read" in beyond.text, beyond.text
    assert unknown.status_code == 400 and "time:reed" in unknown.text, unknown.text
    assert exchanged.status_code == 200, exchanged.text
    assert exchanged.json()["scope"] == "time:read"
