"""The official `mcp` SDK client, unchanged, against the running stack.

It starts with no token and no registration: it gets a 401 from the tools server, reads
the protected-resource metadata, discovers the auth server, registers (DCR), runs the
authorization code flow with PKCE while a headless browser posts the login and consent
forms, gets an audience-bound token and calls tools with it.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from bastion_common.permissions import ALL_PERMISSIONS
from tests.integration.browser import BrowserResult, HeadlessBrowser
from tests.integration.conftest import Stack
from tests.integration.oauth import REDIRECT_URI
from tests.integration.test_roles import TOOL_PERMISSION

pytestmark = pytest.mark.anyio


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def sdk_provider(
    stack: Stack, username: str, password: str, storage: MemoryStorage, scope: str
) -> tuple[OAuthClientProvider, list[BrowserResult]]:
    results: list[BrowserResult] = []

    async def redirect_handler(url: str) -> None:
        browser = HeadlessBrowser(username, password)
        try:
            results.append(await browser.authorize(url, REDIRECT_URI))
        finally:
            await browser.aclose()

    async def callback_handler() -> AuthorizationCodeResult:
        params = results[-1].params
        return AuthorizationCodeResult(
            code=params["code"], state=params.get("state"), iss=params.get("iss")
        )

    provider = OAuthClientProvider(
        server_url=f"{stack.urls['tools']}/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="sdk-integration-test",
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
            scope=scope,
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    return provider, results


async def test_the_sdk_client_discovers_registers_logs_in_and_calls_tools(stack: Stack) -> None:
    username = stack.env["BOOTSTRAP_ADMIN_USERNAME"]
    password = stack.env["BOOTSTRAP_ADMIN_PASSWORD"]
    storage = MemoryStorage()
    provider, pages = sdk_provider(stack, username, password, storage, "weather:read files:read")
    mcp_url = f"{stack.urls['tools']}/mcp"
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(mcp_url, http_client=http)) as client,
    ):
        listed = await client.list_tools()
        result = await client.call_tool("get_weather", {"city": "Paris"})

    names = {tool.name for tool in listed.tools}
    assert "get_weather" in names
    assert not result.is_error
    # The flow really went through DCR, login and consent, and the token is audience-bound.
    assert storage.client is not None and storage.client.client_id
    assert storage.tokens is not None and storage.tokens.refresh_token
    assert pages and pages[-1].params.get("iss") == stack.urls["auth"]
    claims: dict[str, Any] = _unverified_claims(storage.tokens.access_token)
    assert claims["aud"] == mcp_url
    assert claims["iss"] == stack.urls["auth"]
    # The SDK asks for the scopes the 401 challenge names; the admin holds them all, and
    # tools/list shows exactly what the granted scopes allow.
    granted = set(claims["scope"].split())
    assert granted <= set(ALL_PERMISSIONS)
    assert names == {tool for tool, perm in TOOL_PERMISSION.items() if perm in granted}


def _unverified_claims(token: str) -> dict[str, Any]:
    import base64
    import json

    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return claims
