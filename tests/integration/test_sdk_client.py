"""The official `mcp` SDK client, unchanged, against the running stack.

It starts with no token and no registration: it gets a 401 from the tools server, reads
the protected-resource metadata, discovers the auth server, registers (DCR), runs the
authorization code flow with PKCE while a headless browser posts the login and consent
forms, gets an audience-bound token and calls tools with it.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider, OAuthFlowError, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from tests.integration.audit_api import AuditApi, now
from tests.integration.browser import BrowserResult, HeadlessBrowser
from tests.integration.conftest import ACCESS_TOKEN_TTL, CIMD_HOST, Stack
from tests.integration.mint import mint_token
from tests.integration.oauth import REDIRECT_URI
from tests.integration.test_gateway import GATEWAY_PREFIXES, POLICY
from tests.integration.test_roles import TOOL_PERMISSION
from tests.integration.tls import DocumentServer

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
    stack: Stack,
    username: str,
    password: str,
    storage: MemoryStorage,
    scope: str,
    *,
    decisions: list[str] | None = None,
    client_metadata_url: str | None = None,
) -> tuple[OAuthClientProvider, list[BrowserResult]]:
    """The SDK's provider with a headless browser as its user: the n-th authorization
    presses `decisions[n]` on the consent page (default allow). A refused authorization
    ends the flow with OAuthFlowError, as a client's callback would on `error=`."""
    results: list[BrowserResult] = []

    async def redirect_handler(url: str) -> None:
        decision = decisions[len(results)] if decisions else "allow"
        browser = HeadlessBrowser(username, password, decision=decision)
        try:
            results.append(await browser.authorize(url, REDIRECT_URI))
        finally:
            await browser.aclose()

    async def callback_handler() -> AuthorizationCodeResult:
        params = results[-1].params
        if "error" in params:
            raise OAuthFlowError(f"authorization refused: {params['error']}")
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
        client_metadata_url=client_metadata_url,
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
    assert granted == POLICY.role_table.permissions["admin"]
    builtin = {name for name in names if not name.startswith(GATEWAY_PREFIXES)}
    assert builtin == {tool for tool, perm in TOOL_PERMISSION.items() if perm in granted}


def _unverified_claims(token: str) -> dict[str, Any]:
    import base64
    import json

    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return claims


def admin(stack: Stack) -> tuple[str, str]:
    return stack.env["BOOTSTRAP_ADMIN_USERNAME"], stack.env["BOOTSTRAP_ADMIN_PASSWORD"]


async def status_at_tools(stack: Stack, token: str) -> httpx2.Response:
    """A raw tools/list with `token`, to see what the tools server makes of it."""
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(
            f"{stack.urls['tools']}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, text/event-stream",
            },
        )


async def test_the_sdk_client_refreshes_an_expired_access_token_and_keeps_calling_tools(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    storage = MemoryStorage()
    provider, pages = sdk_provider(stack, *admin(stack), storage, "weather:read")
    mcp_url = f"{stack.urls['tools']}/mcp"
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(mcp_url, http_client=http)) as client,
    ):
        before = await client.call_tool("get_weather", {"city": "Paris"})
        assert storage.tokens is not None and storage.tokens.refresh_token
        old = storage.tokens.model_copy()
        assert old.expires_in == ACCESS_TOKEN_TTL
        # The SDK refreshes when its own clock passes the token's expiry (expires_in from
        # the token response): move that moment to now, which is what waiting out the
        # stack's 60-second tokens would do, without the minute.
        assert provider.context.token_expiry_time is not None
        provider.context.token_expiry_time = time.time() - 1
        after = await client.call_tool("get_weather", {"city": "Lyon"})
        listed = await client.list_tools()

    assert not before.is_error and not after.is_error
    assert "get_weather" in {tool.name for tool in listed.tools}
    # The client went on with a refreshed pair, without a second login.
    assert len(pages) == 1
    assert storage.tokens is not None and storage.client is not None
    assert storage.tokens.access_token != old.access_token
    assert storage.tokens.refresh_token not in (None, old.refresh_token)  # rotated
    # The refresh_token grant was used: auth's token.refreshed event for this client.
    client_id = storage.client.client_id
    refreshed = await audit.wait_for(
        "token.refreshed", since=since, principal=admin(stack)[0],
        where=lambda e: e["client_id"] == client_id,
    )  # fmt: skip
    assert refreshed[0]["service"] == "auth" and refreshed[0]["outcome"] == "success"
    assert refreshed[0]["details"]["aud"] == mcp_url
    issued = await audit.events("token.issued", since=since, principal=admin(stack)[0])
    assert len([e for e in issued if e["client_id"] == client_id]) == 1  # one login only

    # An access token past its expiry and the 30 s of allowed clock skew is refused at
    # tools (and the refusal audited), though nobody revoked it: one signed by auth's
    # real key that expired 35 s ago (tests/integration/mint.py), not a 90-second wait.
    rid = secrets.token_hex(16)
    expired = mint_token(
        stack, offset=-(ACCESS_TOKEN_TTL + 35), lifetime=ACCESS_TOKEN_TTL,
        resource=mcp_url, subject=admin(stack)[0],
    )  # fmt: skip
    assert _unverified_claims(expired)["exp"] < time.time() - 30
    async with httpx2.AsyncClient(timeout=10) as http:
        late = await http.post(
            mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {expired}", "X-Request-ID": rid,
                     "Accept": "application/json, text/event-stream"},
        )  # fmt: skip
    assert late.status_code == 401
    assert 'error="invalid_token"' in late.headers["www-authenticate"]
    assert late.json()["error_description"] == "token expired"
    (refused,) = await audit.wait_for(
        "authn.failed", since=since, where=lambda e: e["request_id"] == rid
    )
    assert refused["details"]["reason"] == "token expired"


async def revoke(stack: Stack, client_id: str, tokens: OAuthToken) -> None:
    """RFC 7009 at auth: the refresh token (its whole family) and the access token."""
    async with httpx2.AsyncClient(timeout=10) as http:
        for token, hint in ((tokens.refresh_token, "refresh_token"),
                            (tokens.access_token, "access_token")):  # fmt: skip
            revoked = await http.post(
                f"{stack.urls['auth']}/revoke",
                data={"token": token, "token_type_hint": hint, "client_id": client_id},
            )
            assert revoked.status_code == 200


async def test_after_revocation_the_sdk_client_gets_a_clean_error(
    stack: Stack, audit: AuditApi
) -> None:
    """The user's tokens are revoked (RFC 7009). The client's next call is refused (401),
    the SDK asks its user to authorize again, the user declines, and the connection ends
    promptly with the SDK's OAuthFlowError: one exception the caller can act on."""
    since = now()
    storage = MemoryStorage()
    provider, pages = sdk_provider(
        stack, *admin(stack), storage, "weather:read", decisions=["allow", "deny"]
    )
    mcp_url = f"{stack.urls['tools']}/mcp"
    call_error: Exception | None = None
    returned = False
    flow_errors: list[BaseException] = []
    with anyio.fail_after(30):  # a bound against a hang, not a timing claim
        try:
            async with (
                httpx2.AsyncClient(auth=provider, timeout=30) as http,
                Client(streamable_http_client(mcp_url, http_client=http)) as client,
            ):
                assert not (await client.call_tool("get_weather", {"city": "Paris"})).is_error
                assert storage.tokens is not None and storage.client is not None
                tokens, client_id = storage.tokens, storage.client.client_id
                await revoke(stack, client_id, tokens)
                with anyio.fail_after(5):  # revocation reaches the tools server within a second
                    while (await status_at_tools(stack, tokens.access_token)).status_code != 401:
                        await anyio.sleep(0.1)
                try:
                    await client.call_tool("get_weather", {"city": "Paris"})
                    returned = True
                except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                    call_error = exc
        except* OAuthFlowError as group:
            flow_errors.extend(group.exceptions)
    # The SDK runs each request in its transport's task group: the failed re-authorization
    # ends that group, which cancels the pending call, and leaves the client's context
    # with exactly one error, the OAuthFlowError (`except* OAuthFlowError` handles it;
    # anything else in the group would have escaped the `except*` and failed this test).
    assert call_error is None and not returned
    assert len(flow_errors) == 1 and "access_denied" in str(flow_errors[0])
    assert len(pages) == 2 and pages[1].params["error"] == "access_denied"
    revoked_events = await audit.wait_for(
        "token.revoked", since=since, principal=admin(stack)[0],
        where=lambda e: e["client_id"] == client_id, count=2,
    )  # fmt: skip
    assert {e["details"]["token_type"] for e in revoked_events} == {
        "refresh_token",
        "access_token",
    }
    # The tools server refused the revoked token and said so; the user's refusal is there too.
    await audit.wait_for(
        "authn.failed", since=since, outcome="failure", principal=admin(stack)[0],
        where=lambda e: e["service"] == "tools" and e["details"]["reason"] == "token revoked",
    )  # fmt: skip
    await audit.wait_for("auth.consent", since=since, outcome="denied", principal=admin(stack)[0])


async def test_the_sdk_client_registers_with_a_client_id_metadata_document(
    stack: Stack, cimd: DocumentServer, audit: AuditApi
) -> None:
    """No DCR: the client's id is the https URL of its metadata document, which the test
    serves with a certificate from its own CA; auth fetches it from the docker host."""
    since = now()
    path = f"/clients/sdk-{secrets.token_hex(4)}.json"
    url = f"https://{CIMD_HOST}:{cimd.port}{path}"
    cimd.bodies[path] = json.dumps(
        {
            "client_id": url,
            "client_name": "SDK client with a metadata document",
            "redirect_uris": [REDIRECT_URI],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }
    ).encode()
    storage = MemoryStorage()
    provider, pages = sdk_provider(
        stack, *admin(stack), storage, "weather:read", client_metadata_url=url
    )
    mcp_url = f"{stack.urls['tools']}/mcp"
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(mcp_url, http_client=http)) as client,
    ):
        result = await client.call_tool("get_weather", {"city": "Paris"})

    assert not result.is_error
    assert storage.client is not None and storage.client.client_id == url
    assert storage.tokens is not None
    assert _unverified_claims(storage.tokens.access_token)["client_id"] == url
    assert pages and pages[-1].params["iss"] == stack.urls["auth"]
    assert cimd.hits[path] >= 1  # auth fetched the document itself (then cached it)
    registered = await audit.wait_for(
        "client.registered", since=since, where=lambda e: e["client_id"] == url
    )
    assert registered[0]["details"]["source"] == "cimd"
    await audit.wait_for(
        "token.issued", since=since, principal=admin(stack)[0],
        where=lambda e: e["client_id"] == url,
    )  # fmt: skip
