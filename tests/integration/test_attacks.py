"""Attacks on the running stack, from RFC 9700 and the MCP security best practices.

Each test attacks as an outsider would, then checks that the stack refused and, where the
refusal is a security event, that the audit record has it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

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


async def call_weather(stack: Stack, token: str) -> int:
    mcp = McpHttp(tools_uri(stack), token)
    async with httpx2.AsyncClient(timeout=10) as http:
        reply = await mcp.initialize(http)
        if reply.status != 200:
            return reply.status
        return (await mcp.call_tool(http, "get_weather", {"city": "Paris"})).status


async def audit_events(stack: Stack, type_: str) -> list[dict[str, Any]]:
    out = stack.exec("audit", "python", "-m", "bastion_audit", "events", "--type", type_)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def wait_for_event(stack: Stack, type_: str, **match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for event in await audit_events(stack, type_):
            if all(event.get(k) == v for k, v in match.items()):
                return event
        time.sleep(0.3)
    raise AssertionError(f"no {type_} event matching {match}")


# --- authorization endpoint --------------------------------------------------------


async def test_pkce_downgrade_to_plain_is_refused(stack: Stack) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "pkce-plain")
    verifier, _ = pkce_pair()
    url = client.authorize_url(
        resource=tools_uri(stack), scope="weather:read", challenge=verifier, state="s1"
    ).replace("code_challenge_method=S256", "code_challenge_method=plain")
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        response = await http.get(url)
    # Either an error page or an error redirect, never a login that leads to a code.
    if response.status_code in (302, 303):
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["error"] == ["invalid_request"]
    else:
        assert response.status_code == 400


async def test_an_authorization_request_without_pkce_is_refused(stack: Stack) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "pkce-missing")
    url = client.authorize_url(
        resource=tools_uri(stack), scope="weather:read", challenge="x", state="s2"
    )
    url = url.replace("&code_challenge=x&code_challenge_method=S256", "")
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        response = await http.get(url)
    if response.status_code in (302, 303):
        assert "error=invalid_request" in response.headers["location"]
    else:
        assert response.status_code == 400


async def test_an_unregistered_redirect_uri_gets_an_error_page_not_a_redirect(
    stack: Stack,
) -> None:
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


async def test_an_unknown_resource_is_refused(stack: Stack) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "bad-resource")
    _, challenge = pkce_pair()
    url = client.authorize_url(
        resource="https://attacker.example/mcp", scope="weather:read", challenge=challenge,
        state="s4",
    )  # fmt: skip
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        response = await http.get(url)
    if response.status_code in (302, 303):
        assert "error=invalid_target" in response.headers["location"]
    else:
        assert response.status_code == 400


async def test_the_authorization_response_names_the_issuer_against_mix_up(
    stack: Stack,
) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "mix-up")
    result, _verifier = await client.login(
        *admin(stack), resource=tools_uri(stack), scope="weather:read"
    )
    assert result.params["iss"] == stack.urls["auth"]
    metadata = httpx2.get(f"{stack.urls['auth']}/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == stack.urls["auth"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["code_challenge_methods_supported"] == ["S256"]


# --- token endpoint ----------------------------------------------------------------


async def test_a_replayed_code_is_refused_and_revokes_what_it_issued(stack: Stack) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "code-replay")
    result, verifier = await client.login(
        *admin(stack), resource=tools_uri(stack), scope="weather:read"
    )
    first = await client.exchange(result.params["code"], verifier, resource=tools_uri(stack))
    assert first.status_code == 200
    replay = await client.exchange(result.params["code"], verifier, resource=tools_uri(stack))
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert await call_weather(stack, first.json()["access_token"]) == 401
    await wait_for_event(stack, "oauth.code_replayed")


async def test_a_stolen_code_without_the_verifier_is_refused(stack: Stack) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "code-theft")
    result, _verifier = await client.login(
        *admin(stack), resource=tools_uri(stack), scope="weather:read"
    )
    wrong, _ = pkce_pair()
    response = await client.exchange(result.params["code"], wrong, resource=tools_uri(stack))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_token_responses_are_not_cached(stack: Stack) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "no-store")
    result, verifier = await client.login(
        *admin(stack), resource=tools_uri(stack), scope="weather:read"
    )
    response = await client.exchange(result.params["code"], verifier, resource=tools_uri(stack))
    assert response.status_code == 200
    assert "no-store" in response.headers["cache-control"]


async def test_an_unknown_client_at_the_token_endpoint_gets_invalid_client(stack: Stack) -> None:
    response = httpx2.post(
        f"{stack.urls['auth']}/token",
        data={"grant_type": "authorization_code", "code": "x", "client_id": "nobody",
              "redirect_uri": REDIRECT_URI, "code_verifier": "x" * 43,
              "resource": tools_uri(stack)},
    )  # fmt: skip
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def refresh(stack: Stack, client: OAuthClient, refresh_token: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(
            client.metadata["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": refresh_token,
                  "client_id": client.client_id, "resource": tools_uri(stack)},
        )  # fmt: skip


async def test_a_stolen_refresh_token_replayed_after_rotation_revokes_the_family(
    stack: Stack,
) -> None:
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
    assert await call_weather(stack, second["access_token"]) == 401
    await wait_for_event(stack, "token.refresh_reuse")


# --- tokens at the tools server ----------------------------------------------------


async def test_a_token_for_another_resource_is_refused_at_tools(stack: Stack) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "audience-confusion")
    token = await client.token(*admin(stack), resource=stack.urls["audit"], scope="metrics:view")
    assert claims_of(token["access_token"])["aud"] == stack.urls["audit"]
    assert await call_weather(stack, token["access_token"]) == 401


@pytest.mark.parametrize("attack", ["alg_none", "hs256_with_public_key", "unknown_kid", "tampered"])
async def test_forged_tokens_are_refused(stack: Stack, attack: str) -> None:
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
    mcp = McpHttp(tools_uri(stack), forged)
    async with httpx2.AsyncClient(timeout=10) as http:
        reply = await mcp.initialize(http)
    assert reply.status == 401
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]


async def test_a_missing_token_gets_a_challenge_with_resource_metadata(stack: Stack) -> None:
    mcp = McpHttp(tools_uri(stack), None)
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


async def test_a_revoked_access_token_is_refused_within_a_second(stack: Stack) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "revocation")
    token = await client.token(*admin(stack), resource=tools_uri(stack), scope="weather:read")
    assert await call_weather(stack, token["access_token"]) == 200
    response = httpx2.post(
        f"{stack.urls['auth']}/revoke",
        data={"token": token["access_token"], "client_id": client.client_id},
    )
    assert response.status_code == 200
    time.sleep(1)
    assert await call_weather(stack, token["access_token"]) == 401


async def test_a_disallowed_origin_is_refused(stack: Stack) -> None:
    token = (await admin_tools_token(stack))["access_token"]
    mcp = McpHttp(tools_uri(stack), token, headers={"Origin": "https://evil.example"})
    async with httpx2.AsyncClient(timeout=10) as http:
        reply = await mcp.initialize(http)
    assert reply.status == 403


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


async def test_a_login_post_without_the_csrf_token_is_refused(stack: Stack) -> None:
    http, page = await login_page(stack)
    try:
        form = parse_forms(page.text)[0]
        data = {k: v for k, v in form.inputs.items() if "csrf" not in k.lower()}
        data.update(username=admin(stack)[0], password=admin(stack)[1])
        response = await http.post(str(page.url.join(form.action or str(page.url))), data=data)
    finally:
        await http.aclose()
    assert response.status_code in (400, 403)
    assert "code=" not in str(response.url)


async def test_brute_force_locks_the_account_without_revealing_it_exists(stack: Stack) -> None:
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
        assert created.status_code in (200, 201)
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
    await wait_for_event(stack, "auth.lockout")


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
async def test_dcr_refuses_hostile_redirect_uris(stack: Stack, redirect: str) -> None:
    response = httpx2.post(
        f"{stack.urls['auth']}/register",
        json={"client_name": "evil", "application_type": "web", "redirect_uris": [redirect],
              "token_endpoint_auth_method": "none"},
    )  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")


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
    stack: Stack, client_id: str
) -> None:
    _, challenge = pkce_pair()
    async with httpx2.AsyncClient(follow_redirects=False, timeout=15) as http:
        response = await http.get(
            f"{stack.urls['auth']}/authorize",
            params={"response_type": "code", "client_id": client_id,
                    "redirect_uri": REDIRECT_URI, "code_challenge": challenge,
                    "code_challenge_method": "S256", "state": "x",
                    "resource": tools_uri(stack), "scope": "weather:read"},
        )  # fmt: skip
    assert response.status_code in (400, 401)
    assert "location" not in response.headers


# --- the tools server's own defences ------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "/etc/passwd", "..%2f..%2fetc%2fpasswd", "a/../../x.txt", "x.txt\x00.md",
     "\u2025/\u2025/etc/passwd.txt", "..\\..\\x.txt"],
)  # fmt: skip
async def test_path_traversal_is_refused(stack: Stack, path: str) -> None:
    token = (await admin_tools_token(stack, "files:read"))["access_token"]
    mcp = McpHttp(tools_uri(stack), token)
    async with httpx2.AsyncClient(timeout=10) as http:
        await mcp.initialize(http)
        reply = await mcp.call_tool(http, "read_file", {"path": path})
    assert reply.status == 200
    refused = reply.error is not None or reply.result.get("isError") is True
    assert refused
    assert "root:" not in json.dumps(reply.body)


async def test_malformed_and_oversized_json_rpc_is_refused(stack: Stack) -> None:
    token = (await admin_tools_token(stack))["access_token"]
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    async with httpx2.AsyncClient(timeout=20) as http:
        broken = await http.post(tools_uri(stack), content=b"{not json", headers=headers)
        huge = await http.post(
            tools_uri(stack),
            content=b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"'
            + b"a" * (5 * 1024 * 1024)
            + b'"}}',
            headers=headers,
        )
    assert broken.status_code == 400
    assert huge.status_code in (400, 413)


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
    assert created.status_code in (200, 201), created.text
    return username, password


async def test_a_session_cannot_be_used_by_another_principal(stack: Stack) -> None:
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
    assert stolen.status in (403, 404)
    assert stolen.error is not None
    assert own.status == 200


async def test_rate_limits_hold_across_sessions_of_one_principal(stack: Stack) -> None:
    """Spreading calls over sessions and claimed client addresses (X-Forwarded-For, which
    no service trusts by default) does not buy a bigger bucket (guest: 50)."""
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
    await wait_for_event(stack, "ratelimit.refused", principal=user[0])


async def test_secrets_never_appear_in_any_log(stack: Stack) -> None:
    token = await admin_tools_token(stack)
    await call_weather(stack, token["access_token"])
    secrets_used = [
        stack.env["BOOTSTRAP_ADMIN_PASSWORD"],
        stack.env["REDIS_PASSWORD"],
        stack.env["TOOLS_CLIENT_SECRET"],
        token["access_token"],
        token["refresh_token"],
    ]
    for service in ("redis", "auth", "keys", "tools", "audit"):
        logs = stack.logs(service)
        for value in secrets_used:
            assert value not in logs, f"a secret appears in the {service} log"
