"""A person signs in through Debian's Chromium: the pages work under their own CSP.

The official SDK client runs the flow (DCR, authorization code + PKCE, token, MCP), and
its redirect handler is a real headless Chromium that types the password and presses
Allow or Deny, landing on a callback served on localhost: the issuer's own host, where
cookies are shared across ports. Any console message (a CSP violation above all) fails
the test. Screenshots of both pages go to build/screenshots/.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider, OAuthFlowError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from tests.integration.browser import parse_forms
from tests.integration.chromium import Callback, Chromium, Visit
from tests.integration.conftest import Stack
from tests.integration.oauth import pkce_pair
from tests.integration.test_sdk_client import MemoryStorage

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Chromium]:
    async with Chromium() as browser:
        yield browser


@pytest.fixture
def callback() -> Iterator[Callback]:
    server = Callback()
    try:
        yield server
    finally:
        server.close()


def _person(stack: Stack) -> tuple[str, str]:
    return stack.env["BOOTSTRAP_ADMIN_USERNAME"], stack.env["BOOTSTRAP_ADMIN_PASSWORD"]


def _sdk(
    stack: Stack, chromium: Chromium, callback: Callback, decision: str, shots: str
) -> tuple[OAuthClientProvider, list[Visit]]:
    visits: list[Visit] = []
    username, password = _person(stack)

    async def redirect_handler(url: str) -> None:
        visits.append(
            await chromium.authorize(
                url,
                callback.uri,
                username=username,
                password=password,
                decision=decision,
                screenshots=shots,
            )
        )

    async def callback_handler() -> AuthorizationCodeResult:
        params = visits[-1].params
        if "error" in params:
            raise OAuthFlowError(f"authorization refused: {params['error']}")
        return AuthorizationCodeResult(
            code=params["code"], state=params["state"], iss=params["iss"]
        )

    provider = OAuthClientProvider(
        server_url=f"{stack.urls['tools']}/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="Chromium test agent",
            redirect_uris=[callback.uri],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
            scope="weather:read files:read",
        ),
        storage=MemoryStorage(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    return provider, visits


def _clean(visit: Visit) -> None:
    assert visit.console == [], visit.console
    # The redirect that answered the request deleted the sign-in cookie before the
    # browser reached the client, so the client on localhost:<port> never saw it.
    assert "bastion_session" not in visit.cookies_after


async def test_allow_in_chromium_gives_the_sdk_client_a_token_for_tools(
    stack: Stack, chromium: Chromium, callback: Callback
) -> None:
    provider, visits = _sdk(stack, chromium, callback, "allow", "allow")
    mcp_url = f"{stack.urls['tools']}/mcp"
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(mcp_url, http_client=http)) as client,
    ):
        listed = await client.list_tools()
        result = await client.call_tool("get_weather", {"city": "Paris"})
    assert "get_weather" in {tool.name for tool in listed.tools}
    assert not result.is_error
    (visit,) = visits
    assert set(visit.params) == {"code", "state", "iss"}
    assert visit.params["iss"] == stack.urls["auth"]
    _clean(visit)
    # The browser also asks the client for /favicon.ico; no request carried the cookie.
    assert [hit.path for hit in callback.hits if hit.path == "/callback"] == ["/callback"]
    assert not [hit for hit in callback.hits if "bastion_session" in hit.cookie]


async def test_deny_in_chromium_returns_access_denied_with_state_and_iss(
    stack: Stack, chromium: Chromium, callback: Callback
) -> None:
    provider, visits = _sdk(stack, chromium, callback, "deny", "deny")
    mcp_url = f"{stack.urls['tools']}/mcp"
    refused: list[Exception] = []
    try:
        async with (
            httpx2.AsyncClient(auth=provider, timeout=30) as http,
            Client(streamable_http_client(mcp_url, http_client=http)) as client,
        ):
            await client.list_tools()
    except* OAuthFlowError as group:  # the SDK's transport task group wraps it
        refused.extend(group.exceptions)
    assert [str(e) for e in refused] == ["authorization refused: access_denied"]
    (visit,) = visits
    assert visit.params["error"] == "access_denied"
    assert visit.params["state"] and visit.params["iss"] == stack.urls["auth"]
    _clean(visit)


async def _register_without_application_type(stack: Stack, redirect: str) -> str:
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.urls['auth']}/register",
            json={"client_name": "Loopback agent", "redirect_uris": [redirect]},
        )
    assert response.status_code == 201, response.text
    assert response.json()["application_type"] == "native"
    return str(response.json()["client_id"])


def _authorize_url(stack: Stack, client_id: str, redirect: str, resource: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect,
        "code_challenge": pkce_pair()[1],
        "code_challenge_method": "S256",
        "resource": resource,
        "state": secrets.token_urlsafe(8),
    }
    return f"{stack.urls['auth']}/authorize?{urlencode(query)}"


async def test_cancel_on_the_login_page_in_chromium_returns_access_denied(
    stack: Stack, chromium: Chromium, callback: Callback
) -> None:
    client_id = await _register_without_application_type(stack, callback.uri)
    url = _authorize_url(stack, client_id, callback.uri, f"{stack.urls['tools']}/mcp")
    username, password = _person(stack)
    visit = await chromium.authorize(
        url, callback.uri, username=username, password=password, decision="cancel"
    )
    assert visit.params["error"] == "access_denied" and visit.params["iss"]
    _clean(visit)


async def test_a_loopback_client_holding_the_browser_cookie_gets_no_code(
    stack: Stack, chromium: Chromium, callback: Callback
) -> None:
    """The attack: a client on localhost:<port> receives localhost cookies. After the
    person's flow, it takes the sign-in cookie and drives /authorize for the admin API
    itself, reading each page's CSRF token and posting Allow. It must get no code."""
    client_id = await _register_without_application_type(stack, callback.uri)
    username, password = _person(stack)
    url = _authorize_url(stack, client_id, callback.uri, f"{stack.urls['tools']}/mcp")
    visit = await chromium.authorize(url, callback.uri, username=username, password=password)
    assert "code" in visit.params
    _clean(visit)
    assert visit.session_cookie, "the browser held a sign-in cookie at consent"
    admin_url = _authorize_url(stack, client_id, callback.uri, f"{stack.urls['auth']}/admin")
    async with httpx2.AsyncClient(
        timeout=10, cookies={"bastion_session": visit.session_cookie}
    ) as thief:
        page = await thief.get(admin_url)
        assert page.status_code == 200 and 'name="password"' in page.text
        (form,) = parse_forms(page.text)
        answer = await thief.post(
            f"{stack.urls['auth']}/consent", data={**form.inputs, "decision": "allow"}
        )
    # The cookie died with the person's request: the thief is asked to sign in.
    assert "location" not in answer.headers, answer.headers.get("location")
    assert answer.status_code == 200 and 'name="password"' in answer.text
