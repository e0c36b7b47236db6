"""Enterprise-managed authorization through the stack: an enterprise IdP (standins.py: a
test key, its JWKS served over HTTP to the auth container) issues ID-JAG assertions for
the configured client acme-agent; auth's token endpoint takes them through the RFC 7523
jwt-bearer grant, and the tools service accepts the token it gives.

Each attack is refused with invalid_grant and recorded by the audit service."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.audit_api import AuditApi, now
from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp
from tests.integration.standins import EnterpriseIdp

pytestmark = pytest.mark.anyio
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT = "acme-agent"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _assertion(stack: Stack, idp: EnterpriseIdp, **claims: Any) -> str:
    values: dict[str, Any] = {
        "audience": stack.urls["auth"],
        "client_id": CLIENT,
        "subject": "00u-carol-7731",
        "resource": f"{stack.urls['tools']}/mcp",
        "preferred_username": "carol",
        "groups": ["premium-users"],
        "scope": "weather:read weather:write",
    }
    values.update(claims)
    return idp.assertion(**values)


async def _grant(stack: Stack, assertion: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(
            f"{stack.urls['auth']}/token",
            data={"grant_type": JWT_BEARER, "assertion": assertion},
            auth=(CLIENT, stack.env["IDJAG_CLIENT_SECRET"]),
        )


async def test_an_id_jag_gives_a_token_the_tools_service_accepts(
    stack: Stack, enterprise_idp: EnterpriseIdp, audit: AuditApi
) -> None:
    since = now()
    response = await _grant(stack, _assertion(stack, enterprise_idp))
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refresh_token" not in body and body["scope"] == "weather:read weather:write"
    mcp = McpHttp(f"{stack.urls['tools']}/mcp", body["access_token"])
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await mcp.initialize(http)).status == 200
        wrote = await mcp.call_tool(
            http, "report_weather", {"city": "Bergen", "temperature_c": 7.0, "condition": "rain"}
        )
        read = await mcp.call_tool(http, "list_files", {"directory": "."})
    assert wrote.status == 200 and not wrote.result.get("isError"), wrote.body
    assert read.status == 403  # files:read was not in the assertion's scope
    (issued,) = await audit.wait_for(
        "token.issued", since=since, where=lambda e: e["details"].get("grant_type") == JWT_BEARER
    )
    assert issued["principal"] == "carol@acme" and issued["client_id"] == CLIENT
    assert issued["details"]["roles"] == ["premium", "user"]


def _other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


ATTACKS: list[tuple[str, Callable[[Stack, EnterpriseIdp], str], str]] = [
    ("wrong aud", lambda s, i: _assertion(s, i, audience=s.urls["keys"]),
     "assertion is not meant for this authorization server"),
    ("unknown issuer", lambda s, i: _assertion(s, i, iss="https://idp.evil.example"),
     "assertion issuer is not trusted"),
    ("resource not ours", lambda s, i: _assertion(s, i, resource="https://api.other.example"),
     "assertion names a resource not served here"),
    ("client mismatch", lambda s, i: _assertion(s, i, client_id="someone-else"),
     "assertion was issued to another client"),
    ("expired", lambda s, i: _assertion(s, i, iat=int(time.time()) - 400,
                                         exp=int(time.time()) - 120), "assertion expired"),
    ("wrong typ", lambda s, i: _assertion(s, i, typ="JWT"),
     "assertion is not an ID-JAG (typ must be oauth-id-jag+jwt)"),
    ("bad signature", lambda s, i: _assertion(s, i, key=_other_key()),
     "assertion signature or claims are invalid"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in ATTACKS], ids=[n for n, _, _ in ATTACKS]
)
async def test_a_bad_assertion_is_refused_and_audited(
    stack: Stack,
    enterprise_idp: EnterpriseIdp,
    audit: AuditApi,
    make: Callable[[Stack, EnterpriseIdp], str],
    reason: str,
) -> None:
    since = now()
    response = await _grant(stack, make(stack, enterprise_idp))
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_grant", "error_description": reason}
    (failed,) = await audit.wait_for(
        "oauth.request_failed", since=since, where=lambda e: e["details"].get("reason") == reason
    )
    assert failed["details"]["grant_type"] == JWT_BEARER and failed["client_id"] == CLIENT
    assert failed["details"]["error"] == "invalid_grant"


async def test_a_replayed_assertion_is_refused_and_audited(
    stack: Stack, enterprise_idp: EnterpriseIdp, audit: AuditApi
) -> None:
    since = now()
    assertion = _assertion(stack, enterprise_idp)
    assert (await _grant(stack, assertion)).status_code == 200
    replay = await _grant(stack, assertion)
    assert replay.status_code == 400
    assert replay.json() == {
        "error": "invalid_grant", "error_description": "assertion was already used"
    }  # fmt: skip
    await audit.wait_for(
        "oauth.request_failed", since=since,
        where=lambda e: e["details"].get("reason") == "assertion was already used",
    )  # fmt: skip
