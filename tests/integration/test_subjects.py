"""A person's credentials end together, at tools, on the call after the change (issue 22).

Against the running stack: disabling a user, or signing them out everywhere, ends an
access token from a client without refresh tokens, one from a client with them, an API
key used directly and a token exchanged from it, each refused by tools within 1 s of the
admin's answer; a demotion cuts the user's key to the new role. And the tools service's
own token, which may list users, cannot create or change one.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import anyio
import httpx2
import pytest

from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp
from tests.integration.oauth import REDIRECT_URI, OAuthClient

pytestmark = pytest.mark.anyio

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
CUT_WITHIN_SECONDS = 1.0


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _admin_token(stack: Stack) -> str:
    admin = (stack.env["BOOTSTRAP_ADMIN_USERNAME"], stack.env["BOOTSTRAP_ADMIN_PASSWORD"])
    client = await OAuthClient.register(stack.urls["auth"], "it-subjects-admin")
    body = await client.token(*admin, resource=f"{stack.urls['auth']}/admin", scope="admin:users")
    return str(body["access_token"])


async def _no_refresh_client(stack: Stack) -> OAuthClient:
    auth = stack.urls["auth"]
    async with httpx2.AsyncClient(timeout=10) as http:
        metadata = (await http.get(f"{auth}/.well-known/oauth-authorization-server")).json()
        reply = await http.post(
            metadata["registration_endpoint"],
            json={
                "client_name": "it-no-refresh",
                "application_type": "native",
                "redirect_uris": [REDIRECT_URI],
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            },
        )
        assert reply.status_code == 201, reply.text
    return OAuthClient(auth, reply.json()["client_id"], metadata)


async def _person(stack: Stack, http: httpx2.AsyncClient, admin: str, role: str) -> tuple[str, str]:
    username, password = f"p-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    created = await http.post(
        f"{stack.urls['auth']}/admin/users",
        json={"username": username, "password": password, "roles": [role]},
        headers=_bearer(admin),
    )
    assert created.status_code == 201, created.text
    return username, password


async def _credentials(
    stack: Stack, http: httpx2.AsyncClient, person: tuple[str, str], permissions: list[str]
) -> dict[str, str]:
    """Every kind of credential one person can hold for tools."""
    tools_uri, keys = f"{stack.urls['tools']}/mcp", stack.urls["keys"]
    scope = " ".join(permissions)
    no_refresh = await (await _no_refresh_client(stack)).token(
        *person, resource=tools_uri, scope=scope
    )
    assert "refresh_token" not in no_refresh
    client = await OAuthClient.register(stack.urls["auth"], "it-subjects")
    with_refresh = await client.token(*person, resource=tools_uri, scope=scope)
    assert "refresh_token" in with_refresh
    for_keys = await client.token(*person, resource=keys, scope=scope)
    created = await http.post(
        f"{keys}/v1/keys",
        json={"name": "it", "permissions": permissions},
        headers=_bearer(for_keys["access_token"]),
    )
    assert created.status_code == 201, created.text
    api_key = created.json()["api_key"]
    exchanged = await http.post(
        f"{keys}/token",
        data={"grant_type": EXCHANGE, "subject_token": api_key,
              "subject_token_type": "urn:mcp-secure:api-key", "resource": tools_uri},
    )  # fmt: skip
    assert exchanged.status_code == 200, exchanged.text
    return {
        "no_refresh": no_refresh["access_token"],
        "with_refresh": with_refresh["access_token"],
        "api_key": api_key,
        "exchanged": exchanged.json()["access_token"],
        "refresh_token": with_refresh["refresh_token"],
        "client_id": client.client_id,
    }


async def test_the_tools_service_token_may_list_users_but_not_create_an_admin(
    stack: Stack,
) -> None:
    auth = stack.urls["auth"]
    async with httpx2.AsyncClient(timeout=10) as http:
        service = await http.post(
            f"{auth}/token",
            data={"grant_type": "client_credentials", "resource": f"{auth}/admin"},
            auth=("bastion-tools", stack.env["TOOLS_CLIENT_SECRET"]),
        )
        assert service.status_code == 200, service.text
        headers = _bearer(service.json()["access_token"])
        assert (await http.get(f"{auth}/admin/users", headers=headers)).status_code == 200
        name = f"evil-{secrets.token_hex(3)}"
        made = await http.post(
            f"{auth}/admin/users",
            json={"username": name, "password": secrets.token_urlsafe(16), "roles": ["admin"]},
            headers=headers,
        )
        assert made.status_code == 403 and made.json()["error"] == "access_denied", made.text
        admin = stack.env["BOOTSTRAP_ADMIN_USERNAME"]
        patched = await http.patch(
            f"{auth}/admin/users/{admin}", json={"disabled": True}, headers=headers
        )
        assert patched.status_code == 403
        listed = (await http.get(f"{auth}/admin/users", headers=headers)).json()["users"]
        assert name not in {u["username"] for u in listed}
        assert not next(u for u in listed if u["username"] == admin)["disabled"]
        person = await http.post(
            f"{auth}/admin/users",
            json={"username": name, "password": secrets.token_urlsafe(16), "roles": ["user"]},
            headers=_bearer(await _admin_token(stack)),
        )
        assert person.status_code == 201, person.text


async def _refused_within(
    http: httpx2.AsyncClient, tools_uri: str, sessions: dict[str, McpHttp], since: float
) -> dict[str, float]:
    """Seconds from `since` until tools refuses each credential (401)."""
    took: dict[str, float] = {}
    with anyio.fail_after(CUT_WITHIN_SECONDS):
        while len(took) < len(sessions):
            for name, mcp in sessions.items():
                if name not in took and (await mcp.list_tools(http)).status == 401:
                    took[name] = time.monotonic() - since
    return took


@pytest.mark.parametrize("change", ["disable", "sign_out_everywhere"])
async def test_every_credential_of_a_person_ends_at_tools_within_a_second(
    stack: Stack, change: str
) -> None:
    auth, tools_uri = stack.urls["auth"], f"{stack.urls['tools']}/mcp"
    async with httpx2.AsyncClient(timeout=15) as http:
        admin = await _admin_token(stack)
        person = await _person(stack, http, admin, "user")
        held = await _credentials(stack, http, person, ["weather:read"])
        sessions: dict[str, McpHttp] = {}
        for name in ("no_refresh", "with_refresh", "api_key", "exchanged"):
            mcp = McpHttp(tools_uri, held[name])
            assert (await mcp.initialize(http)).status == 200, name
            assert (await mcp.list_tools(http)).status == 200, name
            sessions[name] = mcp
        since = time.monotonic()
        if change == "disable":
            done = await http.patch(
                f"{auth}/admin/users/{person[0]}", json={"disabled": True}, headers=_bearer(admin)
            )
        else:
            done = await http.post(f"{auth}/admin/users/{person[0]}/revoke", headers=_bearer(admin))
        assert done.status_code == 200, done.text
        took = await _refused_within(http, tools_uri, sessions, since)
        print(f"{change}: seconds until tools refused each credential: {took}")  # noqa: T201
        # A new session with the same credentials is refused too, and so is a refresh.
        for name in sessions:
            assert (await McpHttp(tools_uri, held[name]).initialize(http)).status == 401, name
        refreshed = await http.post(
            f"{auth}/token",
            data={"grant_type": "refresh_token", "client_id": held["client_id"],
                  "refresh_token": held["refresh_token"]},
        )  # fmt: skip
        assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert "Traceback" not in stack.logs("tools")


async def test_a_demotion_cuts_the_persons_key_to_the_new_role(stack: Stack) -> None:
    auth, tools_uri = stack.urls["auth"], f"{stack.urls['tools']}/mcp"
    report: dict[str, Any] = {"city": "Oslo", "temperature_c": 3, "condition": "snow"}
    async with httpx2.AsyncClient(timeout=15) as http:
        admin = await _admin_token(stack)
        person = await _person(stack, http, admin, "premium")
        held = await _credentials(stack, http, person, ["weather:read", "weather:write"])
        key = McpHttp(tools_uri, held["api_key"])
        assert (await key.initialize(http)).status == 200
        written = await key.call_tool(http, "report_weather", report)
        assert written.status == 200 and written.error is None, written.body
        since = time.monotonic()
        demoted = await http.patch(
            f"{auth}/admin/users/{person[0]}", json={"roles": ["guest"]}, headers=_bearer(admin)
        )
        assert demoted.status_code == 200, demoted.text
        # The key keeps working, cut to guest: weather:read only (tools caches a key's
        # answer for at most 1 s).
        with anyio.fail_after(CUT_WITHIN_SECONDS + 0.5):
            while (await key.call_tool(http, "report_weather", report)).status != 403:
                await anyio.sleep(0.05)
        print(f"demotion: key cut after {time.monotonic() - since:.3f} s")  # noqa: T201
        read = await key.call_tool(http, "get_weather", {"city": "Oslo"})
        assert read.status == 200 and read.error is None, read.body
        # Tokens carry the old scopes: they end; a new exchange holds the new role's only.
        assert (await McpHttp(tools_uri, held["exchanged"]).initialize(http)).status == 401
        assert (await McpHttp(tools_uri, held["with_refresh"]).initialize(http)).status == 401
        again = await http.post(
            f"{stack.urls['keys']}/token",
            data={"grant_type": EXCHANGE, "subject_token": held["api_key"],
                  "subject_token_type": "urn:mcp-secure:api-key", "resource": tools_uri},
        )  # fmt: skip
        assert again.status_code == 200 and again.json()["scope"] == "weather:read", again.text
        fresh = McpHttp(tools_uri, again.json()["access_token"])
        assert (await fresh.initialize(http)).status == 200
