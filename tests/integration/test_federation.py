"""People sign in through their organisation's OpenID provider: panva's oidc-provider
(deploy/test-idp), a provider nobody here wrote, with alice (engineering, premium-users)
and bob (staff). auth trusts it as "Example Corp": premium-users maps to our premium
role, and only the engineering group may sign in (compose.test.yaml).

The person is a real Chromium: our login page, the provider's own login form, our
consent page, the client's callback. The official SDK client runs the OAuth side."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from tests.integration.audit_api import AuditApi, now
from tests.integration.chromium import Callback, Chromium, Visit
from tests.integration.conftest import Stack
from tests.integration.idp import ALICE, BOB, Idp
from tests.integration.oauth import pkce_pair
from tests.integration.test_sdk_client import MemoryStorage

pytestmark = pytest.mark.anyio
PROVIDER = "Example Corp"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Chromium]:
    async with Chromium() as browser:
        yield browser


@pytest.fixture
def callback(idp: Idp) -> Iterator[Callback]:
    server = Callback()
    try:
        yield server
    finally:
        server.close()
        idp.reset()  # groups back as they were


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return claims


async def _client(stack: Stack, redirect: str) -> str:
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.urls['auth']}/register",
            json={
                "client_name": "Federated agent",
                "redirect_uris": [redirect],
                "grant_types": ["authorization_code", "refresh_token"],
            },
        )
    assert response.status_code == 201, response.text
    return str(response.json()["client_id"])


def _authorize(stack: Stack, client_id: str, redirect: str, challenge: str, state: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": f"{stack.urls['tools']}/mcp",
        "scope": "weather:read weather:write files:read",
        "state": state,
    }
    return f"{stack.urls['auth']}/authorize?{urlencode(query)}"


async def _token(stack: Stack, data: dict[str, str]) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(f"{stack.urls['auth']}/token", data=data)


async def test_alice_signs_in_through_her_provider_and_the_sdk_client_calls_tools(
    stack: Stack, chromium: Chromium, callback: Callback, audit: AuditApi
) -> None:
    since = now()
    visits: list[Visit] = []

    async def redirect_handler(url: str) -> None:
        visits.append(
            await chromium.authorize(
                url, callback.uri, username=ALICE.username, password=ALICE.password,
                via=PROVIDER, screenshots="federated",
            )
        )  # fmt: skip

    async def callback_handler() -> AuthorizationCodeResult:
        p = visits[-1].params
        return AuthorizationCodeResult(code=p["code"], state=p["state"], iss=p["iss"])

    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=f"{stack.urls['tools']}/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="Federated SDK agent",
            redirect_uris=[callback.uri],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
            scope="weather:read weather:write",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    mcp_url = f"{stack.urls['tools']}/mcp"
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(mcp_url, http_client=http)) as client,
    ):
        result = await client.call_tool("get_weather", {"city": "Oslo"})
    assert not result.is_error
    (visit,) = visits
    # Our pages say nothing in the console (the provider's own pages are not ours).
    ours = [m for m in visit.console if "idp.bastion.test" not in m]
    assert ours == [], visit.console
    assert storage.tokens is not None
    claims = _claims(storage.tokens.access_token)
    # The provider's premium-users group became our premium role, in our own token.
    assert claims["sub"] == "alice@corp" and "premium" in claims["roles"]
    assert "weather:write" in claims["scope"].split()
    (login,) = await audit.wait_for(
        "auth.login", since=since, principal="alice@corp",
        where=lambda e: e["details"].get("method") == "oidc",
    )  # fmt: skip
    assert login["outcome"] == "success" and login["details"]["provider"] == "corp"
    text = json.dumps(login)
    assert "code" not in login["details"] and storage.tokens.access_token not in text


async def _federated_tokens(
    stack: Stack, chromium: Chromium, callback: Callback
) -> tuple[str, dict[str, Any]]:
    client_id = await _client(stack, callback.uri)
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(8)
    visit = await chromium.authorize(
        _authorize(stack, client_id, callback.uri, challenge, state), callback.uri,
        username=ALICE.username, password=ALICE.password, via=PROVIDER,
    )  # fmt: skip
    assert visit.params["state"] == state, visit.params
    response = await _token(
        stack,
        {
            "grant_type": "authorization_code", "client_id": client_id,
            "code": visit.params["code"], "redirect_uri": callback.uri,
            "code_verifier": verifier, "resource": f"{stack.urls['tools']}/mcp",
        },
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return client_id, response.json()


async def test_removal_from_a_group_takes_the_role_away_at_the_next_refresh(
    stack: Stack, chromium: Chromium, callback: Callback, idp: Idp
) -> None:
    client_id, tokens = await _federated_tokens(stack, chromium, callback)
    assert "premium" in _claims(tokens["access_token"])["roles"]
    idp.set_groups(ALICE.username, ["engineering"])
    refreshed = await _token(
        stack,
        {"grant_type": "refresh_token", "client_id": client_id,
         "refresh_token": tokens["refresh_token"]},
    )  # fmt: skip
    assert refreshed.status_code == 200, refreshed.text
    claims = _claims(refreshed.json()["access_token"])
    assert claims["roles"] == ["user"]
    assert "weather:write" not in claims["scope"].split()
    # And when the provider stops vouching for her at all, our refresh ends the grant.
    idp.set_groups(ALICE.username, ["contractors"])
    again = await _token(
        stack,
        {"grant_type": "refresh_token", "client_id": client_id,
         "refresh_token": refreshed.json()["refresh_token"]},
    )  # fmt: skip
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


async def test_a_person_outside_the_allowed_groups_gets_a_clear_page_and_no_code(
    stack: Stack, chromium: Chromium, callback: Callback, audit: AuditApi
) -> None:
    since = now()
    client_id = await _client(stack, callback.uri)
    url = _authorize(stack, client_id, callback.uri, pkce_pair()[1], "s-bob")
    ctx = await chromium.context()
    page = await ctx.new_page()
    try:
        await page.goto(url)
        await page.get_by_role("link", name=f"Sign in with {PROVIDER}").click()
        await page.fill("input[name=login]", BOB.username)
        await page.fill("input[name=password]", BOB.password)
        await page.get_by_role("button", name="Sign in").click()
        alert = page.get_by_role("alert")
        await alert.wait_for()
        assert "not allowed to use this server" in await alert.inner_text()
        # Cancel on that page tells the client, as a refusal should.
        await page.get_by_role("button", name="Cancel").click()
        await page.wait_for_url(f"{callback.uri}?*")
        assert parse_qs(urlsplit(page.url).query)["error"] == ["access_denied"]
    finally:
        await ctx.close()
    refused = await audit.wait_for(
        "auth.login", since=since, outcome="failure",
        where=lambda e: e["details"].get("method") == "oidc",
    )  # fmt: skip
    assert refused[0]["details"]["reason"] == "not allowed by the provider's allowlist"


async def test_a_replayed_callback_is_refused(
    stack: Stack, chromium: Chromium, callback: Callback
) -> None:
    """The provider's answer (code + state) is good once, in the browser that asked."""
    client_id = await _client(stack, callback.uri)
    url = _authorize(stack, client_id, callback.uri, pkce_pair()[1], "s-replay")
    ctx = await chromium.context()
    seen: list[str] = []
    page = await ctx.new_page()
    page.on("request", lambda r: seen.append(r.url) if "/federated/callback" in r.url else None)
    try:
        await page.goto(url)
        await page.get_by_role("link", name=f"Sign in with {PROVIDER}").click()
        await page.fill("input[name=login]", ALICE.username)
        await page.fill("input[name=password]", ALICE.password)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_selector("button[value=allow]")
        (answer,) = seen
        again = await page.goto(answer)
        assert again is not None and again.status == 400
        assert "expired or was started elsewhere" in await page.content()
    finally:
        await ctx.close()
    # Another browser (no session cookie) presenting it fares no better.
    async with httpx2.AsyncClient(timeout=10) as http:
        foreign = await http.get(answer)
    assert foreign.status_code == 400 and "location" not in foreign.headers


async def test_a_provider_that_is_down_gives_a_clear_page(
    stack: Stack, chromium: Chromium, callback: Callback, audit: AuditApi
) -> None:
    """The provider is down when a person tries to sign in through it (auth restarted
    meanwhile, so it has nothing cached): our login page says why, and Cancel works."""
    since = now()
    client_id = await _client(stack, callback.uri)
    url = _authorize(stack, client_id, callback.uri, pkce_pair()[1], "s-down")
    await anyio.to_thread.run_sync(lambda: stack.run("stop", "idp"))
    ctx = await chromium.context()
    try:
        await anyio.to_thread.run_sync(lambda: stack.run("restart", "auth"))
        await anyio.to_thread.run_sync(lambda: stack.run("up", "--wait", "auth"))
        page = await ctx.new_page()
        await page.goto(url)
        await page.get_by_role("link", name=f"Sign in with {PROVIDER}").click()
        alert = page.get_by_role("alert")
        await alert.wait_for()
        assert "cannot be reached right now" in await alert.inner_text()
        assert "Traceback" not in await page.content()
        await page.get_by_role("button", name="Cancel").click()
        await page.wait_for_url(f"{callback.uri}?*")
        assert parse_qs(urlsplit(page.url).query)["error"] == ["access_denied"]
    finally:
        await ctx.close()
        await anyio.to_thread.run_sync(lambda: stack.run("up", "--wait", "idp"))
    errors = await audit.wait_for(
        "auth.login", since=since, outcome="error",
        where=lambda e: e["details"].get("method") == "oidc",
    )  # fmt: skip
    assert errors[0]["details"]["reason"] == "provider unreachable"
