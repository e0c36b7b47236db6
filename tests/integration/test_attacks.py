"""Attacks on the running stack, from RFC 9700 and the MCP security best practices.

Each test attacks as an outsider would, then checks that the stack refused and that the
audit record has the refusal (GET /v1/events of the audit service: type, outcome, and the
principal, client or tool where the attacked service knows them). Refusals at the tools
server are matched by the request id the attacker sent (X-Request-ID), others by what the
event names and by time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import time
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.integration.audit_api import AuditApi, now
from tests.integration.browser import HeadlessBrowser, parse_forms
from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp
from tests.integration.oauth import REDIRECT_URI, OAuthClient, pkce_pair

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def admin(stack: Stack) -> tuple[str, str]:
    return stack.env["BOOTSTRAP_ADMIN_USERNAME"], stack.env["BOOTSTRAP_ADMIN_PASSWORD"]


def tools_uri(stack: Stack) -> str:
    return f"{stack.urls['tools']}/mcp"


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def admin_tools_token(stack: Stack, scope: str = "weather:read files:read") -> dict[str, Any]:
    client = await OAuthClient.register(stack.urls["auth"], "attack-suite")
    return await client.token(*admin(stack), resource=tools_uri(stack), scope=scope)


def request_id() -> str:
    """A fresh X-Request-ID: the tools server's events for the request carry it."""
    return secrets.token_hex(16)


def by_request(rid: str) -> Any:
    return lambda event: event["request_id"] == rid


async def call_weather(stack: Stack, token: str, rid: str | None = None) -> int:
    mcp = McpHttp(tools_uri(stack), token, headers={"X-Request-ID": rid} if rid else {})
    async with httpx2.AsyncClient(timeout=10) as http:
        reply = await mcp.initialize(http)
        if reply.status != 200:
            return reply.status
        return (await mcp.call_tool(http, "get_weather", {"city": "Paris"})).status


def failed_at(endpoint: str, error: str, client_id: str | None = None) -> Any:
    """An auth oauth.request_failed event for this endpoint, error (and client)."""
    return lambda e: (
        e["service"] == "auth"
        and e["details"].get("endpoint") == endpoint
        and e["details"].get("error") == error
        and (client_id is None or e["client_id"] == client_id)
    )


# --- authorization endpoint --------------------------------------------------------


async def test_pkce_downgrade_to_plain_is_refused(stack: Stack, audit: AuditApi) -> None:
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "pkce-plain")
    verifier, _ = pkce_pair()
    url = client.authorize_url(
        resource=tools_uri(stack), scope="weather:read", challenge=verifier, state="s1"
    ).replace("code_challenge_method=S256", "code_challenge_method=plain")
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        response = await http.get(url)
    # An error page, never a redirect (the client registered itself) nor a login.
    assert response.status_code == 400 and "location" not in response.headers
    await audit.wait_for(
        "oauth.request_failed", since=since, outcome="failure",
        where=failed_at("authorize", "invalid_request", client.client_id),
    )  # fmt: skip


async def test_an_authorization_request_without_pkce_is_refused(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "pkce-missing")
    url = client.authorize_url(
        resource=tools_uri(stack), scope="weather:read", challenge="x", state="s2"
    )
    url = url.replace("&code_challenge=x&code_challenge_method=S256", "")
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        response = await http.get(url)
    # An error page, never a redirect (the client registered itself) nor a login.
    assert response.status_code == 400 and "location" not in response.headers
    await audit.wait_for(
        "oauth.request_failed", since=since, outcome="failure",
        where=failed_at("authorize", "invalid_request", client.client_id),
    )  # fmt: skip


async def test_an_unregistered_redirect_uri_gets_an_error_page_not_a_redirect(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "open-redirect")
    _, challenge = pkce_pair()
    url = client.authorize_url(
        resource=tools_uri(stack), scope="weather:read", challenge=challenge, state="s3"
    ).replace("127.0.0.1%3A53682%2Fcallback", "evil.example%2Fsteal")
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        response = await http.get(url)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "evil.example" not in response.text
    await audit.wait_for(
        "oauth.request_failed", since=since, outcome="failure",
        where=failed_at("authorize", "invalid_redirect_uri", client.client_id),
    )  # fmt: skip


async def test_an_unknown_resource_is_refused(stack: Stack, audit: AuditApi) -> None:
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "bad-resource")
    _, challenge = pkce_pair()
    url = client.authorize_url(
        resource="https://attacker.example/mcp", scope="weather:read", challenge=challenge,
        state="s4",
    )  # fmt: skip
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        response = await http.get(url)
    # An error page, never a redirect (the client registered itself) nor a login.
    assert response.status_code == 400 and "location" not in response.headers
    await audit.wait_for(
        "oauth.request_failed", since=since, outcome="failure",
        where=failed_at("authorize", "invalid_target", client.client_id),
    )  # fmt: skip


async def test_the_authorization_response_names_the_issuer_against_mix_up(
    stack: Stack, audit: AuditApi
) -> None:
    """RFC 9207: the redirect names the issuer, so a client talking to two servers can
    tell whose code it holds; a code sent to the wrong token endpoint is refused."""
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "mix-up")
    result, _verifier = await client.login(
        *admin(stack), resource=tools_uri(stack), scope="weather:read"
    )
    assert result.params["iss"] == stack.urls["auth"]
    metadata = httpx2.get(f"{stack.urls['auth']}/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == stack.urls["auth"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    # The mixed-up client hands this server's code to the keys service's token endpoint
    # (another issuer): it is no authorization server for codes, and nothing is issued.
    async with httpx2.AsyncClient(timeout=10) as http:
        mixed = await http.post(
            f"{stack.urls['keys']}/token",
            data={"grant_type": "authorization_code", "code": result.params["code"],
                  "client_id": client.client_id, "code_verifier": _verifier,
                  "redirect_uri": REDIRECT_URI},
        )  # fmt: skip
    assert mixed.status_code == 400 and "access_token" not in mixed.text
    issued = await audit.wait_for(
        "oauth.code_issued", since=since, principal=admin(stack)[0],
        where=lambda e: e["client_id"] == client.client_id,
    )  # fmt: skip
    assert issued[0]["service"] == "auth"


# --- token endpoint ----------------------------------------------------------------


async def test_a_replayed_code_is_refused_and_revokes_what_it_issued(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "code-replay")
    result, verifier = await client.login(
        *admin(stack), resource=tools_uri(stack), scope="weather:read"
    )
    first = await client.exchange(result.params["code"], verifier, resource=tools_uri(stack))
    assert first.status_code == 200
    replay = await client.exchange(result.params["code"], verifier, resource=tools_uri(stack))
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    rid = request_id()
    assert await call_weather(stack, first.json()["access_token"], rid) == 401
    replayed = await audit.wait_for(
        "oauth.code_replayed", since=since, outcome="denied",
        where=lambda e: e["client_id"] == client.client_id,
    )  # fmt: skip
    assert replayed[0]["details"]["revoked_count"] >= 1
    # The access token issued from the code died with it, and tools said so.
    await audit.wait_for(
        "authn.failed", since=since, outcome="failure", principal=admin(stack)[0],
        where=by_request(rid),
    )  # fmt: skip


async def test_a_stolen_code_without_the_verifier_is_refused(stack: Stack, audit: AuditApi) -> None:
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "code-theft")
    result, _verifier = await client.login(
        *admin(stack), resource=tools_uri(stack), scope="weather:read"
    )
    wrong, _ = pkce_pair()
    response = await client.exchange(result.params["code"], wrong, resource=tools_uri(stack))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    await audit.wait_for(
        "oauth.request_failed", since=since, outcome="failure",
        where=failed_at("token", "invalid_grant", client.client_id),
    )  # fmt: skip


async def test_token_responses_are_not_cached(stack: Stack, audit: AuditApi) -> None:
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "no-store")
    result, verifier = await client.login(
        *admin(stack), resource=tools_uri(stack), scope="weather:read"
    )
    response = await client.exchange(result.params["code"], verifier, resource=tools_uri(stack))
    assert response.status_code == 200
    assert "no-store" in response.headers["cache-control"]
    await audit.wait_for(
        "token.issued", since=since, principal=admin(stack)[0],
        where=lambda e: e["client_id"] == client.client_id,
    )  # fmt: skip


async def test_an_unknown_client_at_the_token_endpoint_gets_invalid_client(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    nobody = f"nobody-{secrets.token_hex(4)}"
    response = httpx2.post(
        f"{stack.urls['auth']}/token",
        data={"grant_type": "authorization_code", "code": "x", "client_id": nobody,
              "redirect_uri": REDIRECT_URI, "code_verifier": "x" * 43,
              "resource": tools_uri(stack)},
    )  # fmt: skip
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    await audit.wait_for(
        "oauth.request_failed", since=since, outcome="failure",
        where=failed_at("token", "invalid_client", nobody),
    )  # fmt: skip


async def refresh(stack: Stack, client: OAuthClient, refresh_token: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(
            client.metadata["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": refresh_token,
                  "client_id": client.client_id, "resource": tools_uri(stack)},
        )  # fmt: skip


async def test_a_stolen_refresh_token_replayed_after_rotation_revokes_the_family(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "refresh-theft")
    first = await client.token(*admin(stack), resource=tools_uri(stack), scope="weather:read")
    rotated = await refresh(stack, client, first["refresh_token"])
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert await call_weather(stack, second["access_token"]) == 200
    await anyio.sleep(1.5)  # past the stack's grace window (AUTH_REFRESH_GRACE_SECONDS=1)
    # The thief replays the old refresh token: refused, and the whole family dies.
    replay = await refresh(stack, client, first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    legit = await refresh(stack, client, second["refresh_token"])
    assert legit.status_code == 400
    assert legit.json()["error"] == "invalid_grant"
    await anyio.sleep(1)
    rid = request_id()
    assert await call_weather(stack, second["access_token"], rid) == 401
    reuse = await audit.wait_for(
        "token.refresh_reuse", since=since, outcome="denied", principal=admin(stack)[0],
        where=lambda e: e["client_id"] == client.client_id,
    )  # fmt: skip
    assert reuse[0]["details"]["revoked_count"] >= 1
    await audit.wait_for(
        "authn.failed", since=since, outcome="failure", principal=admin(stack)[0],
        where=by_request(rid),
    )  # fmt: skip


# --- tokens at the tools server ----------------------------------------------------


async def test_a_token_for_another_resource_is_refused_at_tools(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "audience-confusion")
    token = await client.token(*admin(stack), resource=stack.urls["audit"], scope="metrics:view")
    assert claims_of(token["access_token"])["aud"] == stack.urls["audit"]
    rid = request_id()
    assert await call_weather(stack, token["access_token"], rid) == 401
    refused = await audit.wait_for("authn.failed", since=since, where=by_request(rid))
    assert refused[0]["service"] == "tools" and refused[0]["outcome"] == "failure"
    assert refused[0]["details"]["reason"] == "token is not meant for this resource"


async def service_token(stack: Stack, resource: str) -> str:
    """The tools server's own client-credentials token for an upstream (as if leaked)."""
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.urls['auth']}/token",
            data={"grant_type": "client_credentials", "client_id": "bastion-tools",
                  "client_secret": stack.env["TOOLS_CLIENT_SECRET"], "resource": resource},
        )  # fmt: skip
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.mark.parametrize("origin", ["keys", "upstream"])
async def test_token_passthrough_a_token_for_another_service_is_refused_at_tools(
    stack: Stack, audit: AuditApi, origin: str
) -> None:
    """MCP security best practices, "token passthrough": tools accepts only tokens minted
    for itself. Neither a user's token for the keys service (which holds every weather
    scope) nor the upstream token tools itself uses to call audit gets a call through."""
    since = now()
    if origin == "keys":
        client = await OAuthClient.register(stack.urls["auth"], "passthrough")
        body = await client.token(
            *admin(stack), resource=stack.urls["keys"], scope="weather:read files:read"
        )
        token = body["access_token"]
        assert claims_of(token)["aud"] == stack.urls["keys"]
    else:
        token = await service_token(stack, stack.urls["audit"])
        assert claims_of(token)["aud"] == stack.urls["audit"]
    rid = request_id()
    mcp = McpHttp(tools_uri(stack), token, headers={"X-Request-ID": rid})
    async with httpx2.AsyncClient(timeout=10) as http:
        reply = await mcp.initialize(http)
    assert reply.status == 401
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    refused = await audit.wait_for("authn.failed", since=since, where=by_request(rid))
    assert refused[0]["service"] == "tools" and refused[0]["outcome"] == "failure"
    assert refused[0]["details"]["reason"] == "token is not meant for this resource"


async def test_tools_calls_upstreams_with_its_own_token_never_the_callers(
    stack: Stack, audit: AuditApi
) -> None:
    """list_users (auth's admin API) and get_security_audit (audit's report) work with a
    tools-audience token: tools reaches them with its own client-credentials token. Had
    it forwarded the caller's token, auth and audit would have refused it (wrong
    audience) and audited authn.failed; they did not, and the caller's token appears in
    no log of the services it was not meant for."""
    since = now()
    body = await admin_tools_token(stack, "admin:users metrics:view")
    token = body["access_token"]
    rid = request_id()
    mcp = McpHttp(tools_uri(stack), token, headers={"X-Request-ID": rid})
    async with httpx2.AsyncClient(timeout=20) as http:
        assert (await mcp.initialize(http)).status == 200
        users = await mcp.call_tool(http, "list_users", {})
        report = await mcp.call_tool(http, "get_security_audit", {"time_range": "1h"})
    for reply in (users, report):
        assert reply.status == 200 and reply.error is None, reply.body
        assert not reply.result.get("isError"), reply.body
    assert admin(stack)[0] in json.dumps(users.result)
    for tool in ("list_users", "get_security_audit"):
        await audit.wait_for(
            "tool.called", since=since, principal=admin(stack)[0], tool=tool, outcome="success"
        )
    # auth's events reach the record in order: once this marker (a refused token request,
    # sent after the tool calls) is stored, any refusal of a forwarded token would be too.
    marker = f"marker-{secrets.token_hex(4)}"
    httpx2.post(
        f"{stack.urls['auth']}/token",
        data={"grant_type": "client_credentials", "client_id": marker,
              "client_secret": "x" * 40, "resource": stack.urls["audit"]},
    )  # fmt: skip
    await audit.wait_for(
        "oauth.request_failed", since=since, where=lambda e: e["client_id"] == marker
    )
    refused = [
        e for e in await audit.events("authn.failed", since=since)
        if e["service"] in ("auth", "audit")
    ]  # fmt: skip
    assert refused == []
    for service in ("auth", "audit", "keys"):
        assert token not in stack.logs(service), f"the caller's token reached {service}"


@pytest.mark.parametrize("attack", ["alg_none", "hs256_with_public_key", "unknown_kid", "tampered"])
async def test_forged_tokens_are_refused(stack: Stack, audit: AuditApi, attack: str) -> None:
    since = now()
    real = (await admin_tools_token(stack))["access_token"]
    header_b64, payload_b64, signature = real.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    claims = claims_of(real)
    claims["scope"] = (
        "weather:read weather:write files:read files:write files:delete admin:users metrics:view"
    )
    if attack == "alg_none":
        none_header = b64(json.dumps({**header, "alg": "none"}).encode())
        forged = f"{none_header}.{b64(json.dumps(claims).encode())}."
    elif attack == "hs256_with_public_key":
        # Key confusion (RFC 8725 §2.1): sign with HMAC, using the published public key.
        jwks = httpx2.get(f"{stack.urls['auth']}/jwks.json").json()
        public_key = jwt.PyJWK(jwks["keys"][0]).key
        pem = public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        signing_input = (
            b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": header["kid"]}).encode())
            + "."
            + b64(json.dumps(claims).encode())
        )
        mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        forged = f"{signing_input}.{b64(mac)}"
    elif attack == "unknown_kid":
        key = ec.generate_private_key(ec.SECP256R1())
        forged = jwt.encode(claims, key, algorithm="ES256",
                            headers={"kid": "attacker-key", "typ": "at+jwt"})  # fmt: skip
    else:
        forged = f"{header_b64}.{b64(json.dumps(claims).encode())}.{signature}"
    rid = request_id()
    mcp = McpHttp(tools_uri(stack), forged, headers={"X-Request-ID": rid})
    async with httpx2.AsyncClient(timeout=10) as http:
        reply = await mcp.initialize(http)
    assert reply.status == 401
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    # The forged claims name no one: the event has no principal, only the refusal.
    refused = await audit.wait_for("authn.failed", since=since, where=by_request(rid))
    assert refused[0]["service"] == "tools" and refused[0]["outcome"] == "failure"
    assert refused[0]["principal"] is None and refused[0]["details"]["presented"] == "bearer"


async def test_a_missing_token_gets_a_challenge_with_resource_metadata(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    rid = request_id()
    mcp = McpHttp(tools_uri(stack), None, headers={"X-Request-ID": rid})
    async with httpx2.AsyncClient(timeout=10) as http:
        reply = await mcp.initialize(http)
        assert reply.status == 401
        challenge = reply.headers["www-authenticate"]
        assert "resource_metadata=" in challenge
        assert "scope=" in challenge
        metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
        metadata = (await http.get(metadata_url)).json()
    assert metadata["resource"] == tools_uri(stack)
    assert metadata["authorization_servers"] == [stack.urls["auth"]]
    assert "offline_access" not in metadata.get("scopes_supported", [])
    refused = await audit.wait_for("authn.failed", since=since, where=by_request(rid))
    assert refused[0]["details"] == {"reason": "missing_token", "presented": "none"}


async def test_a_revoked_access_token_is_refused_within_a_second(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    client = await OAuthClient.register(stack.urls["auth"], "revocation")
    token = await client.token(*admin(stack), resource=tools_uri(stack), scope="weather:read")
    assert await call_weather(stack, token["access_token"]) == 200
    response = httpx2.post(
        f"{stack.urls['auth']}/revoke",
        data={"token": token["access_token"], "client_id": client.client_id},
    )
    assert response.status_code == 200
    await anyio.sleep(1)
    rid = request_id()
    assert await call_weather(stack, token["access_token"], rid) == 401
    await audit.wait_for(
        "token.revoked", since=since, principal=admin(stack)[0],
        where=lambda e: e["client_id"] == client.client_id,
    )  # fmt: skip
    refused = await audit.wait_for(
        "authn.failed", since=since, principal=admin(stack)[0], where=by_request(rid)
    )
    assert refused[0]["outcome"] == "failure"
    assert refused[0]["details"]["reason"] == "token revoked"


async def test_a_disallowed_origin_is_refused(stack: Stack, audit: AuditApi) -> None:
    since = now()
    token = (await admin_tools_token(stack))["access_token"]
    rid = request_id()
    mcp = McpHttp(
        tools_uri(stack), token, headers={"Origin": "https://evil.example", "X-Request-ID": rid}
    )
    async with httpx2.AsyncClient(timeout=10) as http:
        reply = await mcp.initialize(http)
    assert reply.status == 403
    refused = await audit.wait_for(
        "authz.denied", since=since, outcome="denied", where=by_request(rid)
    )
    assert refused[0]["details"]["reason"] == "origin_not_allowed"


# --- login and consent ---------------------------------------------------------------


async def login_page(stack: Stack) -> tuple[httpx2.AsyncClient, httpx2.Response]:
    client = await OAuthClient.register(stack.urls["auth"], "login-page")
    _, challenge = pkce_pair()
    url = client.authorize_url(
        resource=tools_uri(stack), scope="weather:read", challenge=challenge, state="s9"
    )
    http = httpx2.AsyncClient(follow_redirects=True, timeout=10)
    return http, await http.get(url)


async def test_login_and_consent_pages_refuse_framing_and_caching(stack: Stack) -> None:
    http, page = await login_page(stack)
    await http.aclose()
    assert page.status_code == 200
    assert page.headers["x-frame-options"].upper() == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "no-store" in page.headers["cache-control"]
    cookie = page.headers.get("set-cookie", "")
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()


async def test_a_login_post_without_the_csrf_token_is_refused(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    http, page = await login_page(stack)
    try:
        form = parse_forms(page.text)[0]
        data = {k: v for k, v in form.inputs.items() if "csrf" not in k.lower()}
        data.update(username=admin(stack)[0], password=admin(stack)[1])
        response = await http.post(str(page.url.join(form.action or str(page.url))), data=data)
    finally:
        await http.aclose()
    assert response.status_code == 403  # the error page, never a redirect
    assert "code=" not in str(response.url)
    await audit.wait_for(
        "oauth.request_failed", since=since, outcome="denied",
        where=lambda e: e["details"].get("endpoint") == "login"
        and e["details"].get("error") == "csrf",
    )  # fmt: skip


async def test_brute_force_locks_the_account_without_revealing_it_exists(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    username = f"victim-{secrets.token_hex(3)}"
    async with httpx2.AsyncClient(timeout=10) as http:
        client = await OAuthClient.register(stack.urls["auth"], "bruteforce-admin")
        admin_token = await client.token(
            *admin(stack), resource=f"{stack.urls['auth']}/admin", scope="admin:users"
        )
        password = secrets.token_urlsafe(16)
        created = await http.post(
            f"{stack.urls['auth']}/admin/users",
            json={"username": username, "password": password, "roles": ["guest"]},
            headers={"Authorization": f"Bearer {admin_token['access_token']}"},
        )
        assert created.status_code == 201
    attacker = await OAuthClient.register(stack.urls["auth"], "bruteforce")
    for _ in range(6):
        browser = HeadlessBrowser(username, "wrong-" + secrets.token_hex(4))
        with pytest.raises(AssertionError):
            await browser.authorize(
                attacker.authorize_url(resource=tools_uri(stack), scope="weather:read",
                                       challenge=pkce_pair()[1], state="bf"),
                REDIRECT_URI, max_steps=3,
            )  # fmt: skip
        await browser.aclose()
    # Now even the right password is refused while the lock holds.
    with pytest.raises(AssertionError):
        await attacker.login(username, password, resource=tools_uri(stack), scope="weather:read")
    await audit.wait_for("auth.lockout", since=since, outcome="denied", principal=username)
    await audit.wait_for("auth.login", since=since, outcome="failure", principal=username, count=5)
    # The right password, refused while locked, is audited as denied (not a success).
    await audit.wait_for("auth.login", since=since, outcome="denied", principal=username)
    assert (
        await audit.events("auth.login", since=since, outcome="success", principal=username) == []
    )


SPRAY_CLIENT = """
import json, socket, sys, urllib.error, urllib.parse, urllib.request, http.cookiejar
from html.parser import HTMLParser
authorize_url, password = sys.argv[1], sys.argv[2]
attempts = [(name, password) for name in sys.argv[3].split(",")] + [tuple(sys.argv[4:6])]
class Form(HTMLParser):
    def __init__(self):
        super().__init__(); self.action = None; self.inputs = {}
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = a.get("action") or ""
        elif tag == "input" and a.get("name"):
            self.inputs[a["name"]] = a.get("value") or ""
def fetch(opener, url, data=None):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with opener.open(urllib.request.Request(url, body), timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
results = []
for username, password in attempts:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(
        http.cookiejar.CookieJar()))
    status, page = fetch(opener, authorize_url)
    form = Form(); form.feed(page)
    data = dict(form.inputs, username=username, password=password)
    status, page = fetch(opener, urllib.parse.urljoin(authorize_url, form.action), data)
    results.append([username, status, "consent" in page.lower() and "decision" in page])
print(json.dumps({"ip": socket.gethostbyname(socket.gethostname()), "results": results}))
"""


async def test_password_spraying_from_one_address_locks_that_address_only(
    stack: Stack, audit: AuditApi
) -> None:
    """One password tried against many accounts from one address (a container on the
    stack's network, so the lock does not fall on the test host): after the per-IP
    limit (AUTH_IP_FAILURE_LIMIT, 50) even a real account's right password is refused
    from there (429, the same generic page), while the same login from another address
    still works. The lock and every failure are audited with the sprayer's address."""
    since = now()
    victim, victim_password = await create_user(stack, "guest")
    attacker = await OAuthClient.register(stack.urls["auth"], "sprayer")
    url = attacker.authorize_url(resource=tools_uri(stack), scope="weather:read",
                                 challenge=pkce_pair()[1], state="spray")  # fmt: skip
    internal = url.replace(stack.urls["auth"], "http://auth:8000")
    sprayed = [f"spray-{i}-{secrets.token_hex(2)}" for i in range(52)]
    image = f"mcp-bastion/app:{stack.env['IMAGE_TAG']}"
    # 52 accounts with one password, then the victim's right password: one address.
    run = subprocess.run(  # noqa: S603 - fixed argv
        ["docker", "run", "--rm", "--network", f"{stack.project}_default", "--read-only",
         "--cap-drop", "ALL", image, "python", "-c", SPRAY_CLIENT, internal,
         "Winter2026!", ",".join([victim, *sprayed]), victim, victim_password],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    results = out["results"]
    statuses = [status for _user, status, _ok in results]
    assert not any(ok for _user, _status, ok in results)
    # 50 wrong passwords (401), then the address is blocked (429, the same generic page),
    # the victim's right password included.
    assert statuses[:50] == [401] * 50
    assert set(statuses[50:]) == {429}
    assert results[-1][0] == victim
    locks = await audit.wait_for(
        "auth.lockout", since=since, outcome="denied", where=lambda e: e["ip"] == out["ip"]
    )
    assert any(e["details"].get("scope") == "ip" for e in locks)
    failures = await audit.wait_for(
        "auth.login", since=since, outcome="failure", count=50,
        where=lambda e: e["ip"] == out["ip"],
    )  # fmt: skip
    assert len({e["principal"] for e in failures}) >= 50  # many accounts, one address
    await audit.wait_for(  # the right password, refused at the locked address
        "auth.login", since=since, outcome="denied", principal=victim,
        where=lambda e: e["ip"] == out["ip"],
    )  # fmt: skip
    # The right password from elsewhere (the test host) still signs the victim in.
    token = await attacker.token(victim, victim_password, resource=tools_uri(stack),
                                 scope="weather:read")  # fmt: skip
    assert token["access_token"]


# --- client registration -----------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect",
    [
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "http://evil.example/callback",
        "https://client.example/cb#fragment",
        "https://" + "a" * 5000 + ".example/cb",
    ],
)
async def test_dcr_refuses_hostile_redirect_uris(
    stack: Stack, audit: AuditApi, redirect: str
) -> None:
    since = now()
    response = httpx2.post(
        f"{stack.urls['auth']}/register",
        json={"client_name": "evil", "application_type": "web", "redirect_uris": [redirect],
              "token_endpoint_auth_method": "none"},
    )  # fmt: skip
    assert response.status_code == 400
    error = response.json()["error"]
    assert error in ("invalid_redirect_uri", "invalid_client_metadata")
    await audit.wait_for(
        "client.registered", since=since, outcome="failure",
        where=lambda e: e["service"] == "auth" and e["details"]["error"] == error,
    )  # fmt: skip


@pytest.mark.parametrize(
    "client_id",
    [
        "https://169.254.169.254/latest/meta-data",
        "https://127.0.0.1/client.json",
        "https://10.0.0.1/client.json",
        "http://client.example/client.json",
        "https://[::1]/client.json",
    ],
)
async def test_client_id_metadata_documents_at_internal_addresses_are_refused(
    stack: Stack, audit: AuditApi, client_id: str
) -> None:
    since = now()
    _, challenge = pkce_pair()
    async with httpx2.AsyncClient(follow_redirects=False, timeout=15) as http:
        response = await http.get(
            f"{stack.urls['auth']}/authorize",
            params={"response_type": "code", "client_id": client_id,
                    "redirect_uri": REDIRECT_URI, "code_challenge": challenge,
                    "code_challenge_method": "S256", "state": "x",
                    "resource": tools_uri(stack), "scope": "weather:read"},
        )  # fmt: skip
    assert response.status_code == 400  # the error page, never a redirect
    assert "location" not in response.headers
    await audit.wait_for(
        "oauth.request_failed", since=since, outcome="failure",
        where=failed_at("authorize", "invalid_client", client_id),
    )  # fmt: skip


# --- the tools server's own defences ------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "/etc/passwd", "..%2f..%2fetc%2fpasswd", "a/../../x.txt", "x.txt\x00.md",
     "\u2025/\u2025/etc/passwd.txt", "..\\..\\x.txt"],
)  # fmt: skip
async def test_path_traversal_is_refused(stack: Stack, audit: AuditApi, path: str) -> None:
    since = now()
    token = (await admin_tools_token(stack, "files:read"))["access_token"]
    mcp = McpHttp(tools_uri(stack), token)
    async with httpx2.AsyncClient(timeout=10) as http:
        await mcp.initialize(http)
        reply = await mcp.call_tool(http, "read_file", {"path": path})
    assert reply.status == 200
    refused = reply.error is not None or reply.result.get("isError") is True
    assert refused
    assert "root:" not in json.dumps(reply.body)
    # Either the arguments were refused before the tool ran, or the tool refused the path.
    kind = "tool.invalid_params" if reply.error is not None else "tool.called"
    events = await audit.wait_for(
        kind, since=since, principal=admin(stack)[0], tool="read_file",
        outcome="failure" if reply.error is not None else "error",
    )  # fmt: skip
    assert events[0]["service"] == "tools"


async def test_malformed_and_oversized_json_rpc_is_refused(stack: Stack, audit: AuditApi) -> None:
    since = now()
    token = (await admin_tools_token(stack))["access_token"]
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    broken_rid, huge_rid = request_id(), request_id()
    async with httpx2.AsyncClient(timeout=20) as http:
        broken = await http.post(
            tools_uri(stack), content=b"{not json", headers={**headers, "X-Request-ID": broken_rid}
        )
        huge = await http.post(
            tools_uri(stack),
            content=b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"'
            + b"a" * (5 * 1024 * 1024)
            + b'"}}',
            headers={**headers, "X-Request-ID": huge_rid},
        )
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == -32700
    assert huge.status_code == 413
    for rid, reason in ((broken_rid, "parse_error"), (huge_rid, "too_large")):
        (event,) = await audit.wait_for(
            "request.invalid", since=since, where=by_request(rid), outcome="failure"
        )
        assert event["details"]["reason"] == reason
        assert event["principal"] == admin(stack)[0]


async def create_user(stack: Stack, role: str) -> tuple[str, str]:
    client = await OAuthClient.register(stack.urls["auth"], "attack-admin")
    admin_token = await client.token(
        *admin(stack), resource=f"{stack.urls['auth']}/admin", scope="admin:users"
    )
    username, password = f"{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    async with httpx2.AsyncClient(timeout=10) as http:
        created = await http.post(
            f"{stack.urls['auth']}/admin/users",
            json={"username": username, "password": password, "roles": [role]},
            headers={"Authorization": f"Bearer {admin_token['access_token']}"},
        )
    assert created.status_code == 201, created.text
    return username, password


async def test_a_session_cannot_be_used_by_another_principal(stack: Stack, audit: AuditApi) -> None:
    since = now()
    owner = (await admin_tools_token(stack))["access_token"]
    guest = await create_user(stack, "premium")
    client = await OAuthClient.register(stack.urls["auth"], "session-thief")
    thief = (await client.token(*guest, resource=tools_uri(stack), scope="weather:read"))[
        "access_token"
    ]
    mcp = McpHttp(tools_uri(stack), owner)
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await mcp.initialize(http)).status == 200
        assert mcp.session_id
        hijack = McpHttp(tools_uri(stack), thief, session_id=mcp.session_id)
        stolen = await hijack.call_tool(http, "get_weather", {"city": "Paris"})
        own = await mcp.call_tool(http, "get_weather", {"city": "Paris"})
    assert stolen.status == 404
    assert stolen.error is not None
    assert own.status == 200
    (event,) = await audit.wait_for(
        "request.invalid", since=since, principal=guest[0], outcome="denied"
    )
    assert event["details"]["reason"] == "unknown_or_foreign_session"
    assert event["details"]["session"] == mcp.session_id


async def test_rate_limits_hold_across_sessions_of_one_principal(
    stack: Stack, audit: AuditApi
) -> None:
    """Spreading calls over sessions and claimed client addresses (X-Forwarded-For, which
    no service trusts by default) does not buy a bigger bucket (guest: 50)."""
    since = now()
    user = await create_user(stack, "guest")
    client = await OAuthClient.register(stack.urls["auth"], "bucket-spreader")
    token = (await client.token(*user, resource=tools_uri(stack), scope="weather:read"))[
        "access_token"
    ]
    statuses: list[int] = []
    async with httpx2.AsyncClient(timeout=10) as http:
        sessions = [
            McpHttp(tools_uri(stack), token, headers={"X-Forwarded-For": f"203.0.113.{i}"})
            for i in range(4)
        ]
        for session in sessions:
            await session.initialize(http)
        for _ in range(20):
            for session in sessions:
                reply = await session.call_tool(http, "get_weather", {"city": "Paris"})
                statuses.append(reply.status)
    assert 429 in statuses
    assert statuses.count(200) <= 50 + 10  # capacity + refill over the run, at most
    refused = await audit.wait_for(
        "ratelimit.refused", since=since, outcome="denied", principal=user[0],
        count=statuses.count(429),
    )  # fmt: skip
    assert {e["details"]["bucket"] for e in refused} == {"principal"}


# Runs in a throwaway container on the stack's network (stdlib only): the MCP handshake,
# then `calls` get_weather calls, all with the token in $TOKEN. Prints this container's
# address and every HTTP status it got.
SPREAD_CLIENT = """
import json, os, socket, sys, urllib.error, urllib.request
url, calls = sys.argv[1], int(sys.argv[2])
headers = {"Authorization": "Bearer " + os.environ["TOKEN"], "Content-Type": "application/json",
           "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
def post(payload):
    request = urllib.request.Request(url, json.dumps(payload).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            response.read()
            return response.status, response.headers.get("mcp-session-id")
    except urllib.error.HTTPError as error:
        return error.code, None
statuses = []
hello = {"protocolVersion": "2025-06-18", "capabilities": {},
         "clientInfo": {"name": "spread", "version": "1"}}
status, session = post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
statuses.append(status)
if session:
    headers["Mcp-Session-Id"] = session
statuses.append(post({"jsonrpc": "2.0", "method": "notifications/initialized"})[0])
for n in range(calls):
    statuses.append(post({"jsonrpc": "2.0", "id": n + 1, "method": "tools/call",
                          "params": {"name": "get_weather", "arguments": {"city": "Paris"}}})[0])
print(json.dumps({"ip": socket.gethostbyname(socket.gethostname()), "statuses": statuses}))
"""


async def test_rate_limits_hold_across_truly_distinct_source_addresses(
    stack: Stack, audit: AuditApi
) -> None:
    """The same principal's token used at once from four containers, each with its own
    address on the stack's network (not a claimed X-Forwarded-For): the guest's one
    bucket (50, refilling 1/s) still bounds what gets through, and every refusal is
    audited with the address it came from."""
    capacity, refill, clients, calls = 50, 1.0, 4, 30
    user = await create_user(stack, "guest")
    client = await OAuthClient.register(stack.urls["auth"], "address-spreader")
    token = (await client.token(*user, resource=tools_uri(stack), scope="weather:read"))[
        "access_token"
    ]
    since = now()
    image = f"mcp-bastion/app:{stack.env['IMAGE_TAG']}"
    argv = [
        "docker", "run", "--rm", "--network", f"{stack.project}_default", "--env", "TOKEN",
        "--read-only", "--cap-drop", "ALL", image,
        "python", "-c", SPREAD_CLIENT, "http://tools:8000/mcp", str(calls),
    ]  # fmt: skip
    started = time.monotonic()
    runs = [
        subprocess.Popen(  # noqa: S603 - fixed argv
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TOKEN": token},
        )  # fmt: skip
        for _ in range(clients)
    ]
    outputs = [run.communicate(timeout=180) for run in runs]
    elapsed = time.monotonic() - started
    results = []
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    addresses = {r["ip"] for r in results}
    assert len(addresses) == clients  # four real source addresses
    statuses = [status for r in results for status in r["statuses"]]
    allowed = sum(1 for status in statuses if status < 400)
    refused = statuses.count(429)
    # One bucket for the principal, whatever the address: at most its capacity plus what
    # refilled while the clients ran (elapsed includes container start-up: generous).
    assert allowed <= capacity + refill * elapsed
    assert refused > 0
    # Every refusal is audited, for this principal, with the address that sent it...
    events = await audit.wait_for(
        "ratelimit.refused", since=since, outcome="denied", principal=user[0], count=refused
    )
    assert len(events) == refused
    assert {e["details"]["bucket"] for e in events} == {"principal"}
    # ...every call that ran is a tool.called event, and the tools server saw the four
    # addresses themselves (each client's calls were either run or refused there).
    calls_ran = sum(1 for r in results for status in r["statuses"][2:] if status == 200)
    ran = await audit.wait_for(
        "tool.called", since=since, principal=user[0], outcome="success", count=calls_ran
    )
    assert len(ran) == calls_ran <= allowed
    assert {e["ip"] for e in events} | {e["ip"] for e in ran} == addresses


async def test_secrets_never_appear_in_any_log(stack: Stack) -> None:
    token = await admin_tools_token(stack)
    await call_weather(stack, token["access_token"])
    secrets_used = [
        stack.env["BOOTSTRAP_ADMIN_PASSWORD"],
        *(stack.env[f"REDIS_PASSWORD_{user}"] for user in ("AUTH", "KEYS", "TOOLS", "AUDIT")),
        *(stack.env[f"EVENT_KEY_{user}"] for user in ("AUTH", "KEYS", "TOOLS", "AUDIT")),
        stack.env["TOOLS_CLIENT_SECRET"],
        token["access_token"],
        token["refresh_token"],
    ]
    for service in ("redis", "auth", "keys", "tools", "audit"):
        logs = stack.logs(service)
        for value in secrets_used:
            assert value not in logs, f"a secret appears in the {service} log"
