"""The auth service in the running stack: the official mcp SDK client's OAuth support
against it (discovery from the tools server, DCR, headless login + consent, token for the
tools resource), revocation seen by the tools server, bastion-tools' client credentials,
and the admin CLI inside the container."""

from __future__ import annotations

import base64
import json

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.integration.conftest import Stack
from tests.integration.test_sdk_client import MemoryStorage, sdk_provider

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_sdk_client_gets_a_tools_token_and_revocation_reaches_the_tools_server(
    stack: Stack,
) -> None:
    storage = MemoryStorage()
    provider, pages = sdk_provider(
        stack,
        stack.env["BOOTSTRAP_ADMIN_USERNAME"],
        stack.env["BOOTSTRAP_ADMIN_PASSWORD"],
        storage,
        "weather:read",
    )
    mcp_url = f"{stack.urls['tools']}/mcp"
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(mcp_url, http_client=http)) as client,
    ):
        listed = await client.list_tools()
    # The SDK picks the scope itself (from the tools server's challenge / metadata), so
    # the tool list follows the admin's roles; what matters here is the flow and the token.
    assert "get_weather" in {t.name for t in listed.tools}
    assert pages and pages[-1].params["iss"] == stack.urls["auth"]
    assert storage.tokens is not None and storage.client is not None
    token = storage.tokens.access_token
    assert storage.tokens.refresh_token
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aud"] == mcp_url and claims["iss"] == stack.urls["auth"]

    async with httpx2.AsyncClient(timeout=10) as http:
        meta = (
            await http.get(f"{stack.urls['auth']}/.well-known/oauth-authorization-server")
        ).json()
        assert meta["issuer"] == stack.urls["auth"]
        revoked = await http.post(
            meta["revocation_endpoint"],
            data={"client_id": storage.client.client_id, "token": token},
        )
        assert revoked.status_code == 200
        probe = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {
            "authorization": f"Bearer {token}",
            "accept": "application/json, text/event-stream",
        }
        with anyio.fail_after(1):
            while True:
                refused = await http.post(mcp_url, json=probe, headers=headers)
                if refused.status_code == 401:
                    break
                await anyio.sleep(0.05)


async def test_bastion_tools_client_credentials_reach_the_admin_api(stack: Stack) -> None:
    auth = stack.urls["auth"]
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{auth}/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "bastion-tools",
                "client_secret": stack.env["TOOLS_CLIENT_SECRET"],
                "resource": f"{auth}/admin",
            },
        )
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        users = await http.get(
            f"{auth}/admin/users",
            headers={"authorization": f"Bearer {response.json()['access_token']}"},
        )
        assert users.status_code == 200
        assert stack.env["BOOTSTRAP_ADMIN_USERNAME"] in {
            u["username"] for u in users.json()["users"]
        }
        wrong = await http.post(
            f"{auth}/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "bastion-tools",
                "client_secret": "x" * 40,
                "resource": f"{auth}/admin",
            },
        )
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


async def test_admin_cli_in_the_container_lists_users_and_rotates_keys(stack: Stack) -> None:
    listed = json.loads(stack.exec("auth", "python", "-m", "bastion_auth", "users", "list"))
    assert stack.env["BOOTSTRAP_ADMIN_USERNAME"] in {u["username"] for u in listed["users"]}
    rotated = json.loads(stack.exec("auth", "python", "-m", "bastion_auth", "keys", "rotate"))
    async with httpx2.AsyncClient(timeout=10) as http:
        keys = (await http.get(f"{stack.urls['auth']}/jwks.json")).json()["keys"]
    assert rotated["kid"] in {k["kid"] for k in keys} and len(keys) == 2
