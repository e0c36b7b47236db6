"""Token exchange (RFC 8693) for the gateway: a caller's token for an upstream's.

Every refusal is attacked: another client, a token for another resource, a revoked or
signed-out token, an audience nobody configured (or one of our own), a scope beyond the
caller's or the upstream's, actor tokens, the wrong token types. Each is refused with
the RFC 6749 error, audited, and issues nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from services.auth.tests.helpers import (
    ISSUER,
    KEYS,
    TOOLS,
    TOOLS_SECRET,
    Harness,
    harness,
    make_settings,
)

from bastion_auth.exchange import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE
from bastion_common.tokens import TokenValidator, TrustedIssuer

pytestmark = pytest.mark.anyio

UPSTREAM = "https://time.example.test/mcp"
OFFERED = ["weather:read", "files:read", "files:write"]


@pytest.fixture
async def gw(redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = make_settings(
        redis_url, tmp_path, token_exchange_audiences={UPSTREAM: OFFERED}, token_exchange_ttl=120
    )
    async with harness(settings) as value:
        yield value


async def caller_token(h: Harness, scope: str = "weather:read files:read") -> str:
    token: str = (await h.tokens(scope=scope))["access_token"]
    return token


def form(token: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": TOKEN_EXCHANGE,
        "client_id": "bastion-tools",
        "client_secret": TOOLS_SECRET,
        "subject_token": token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "resource": UPSTREAM,
        **extra,
    }


async def verified(h: Harness, token: str, audience: str) -> dict[str, Any]:
    """The claims, checked the way an upstream that trusts us would (signature against
    our JWKS, issuer, exact audience), with the one token validator."""
    issuer = TrustedIssuer(ISSUER, jwks_url=f"{ISSUER}/jwks.json")
    validator = TokenValidator([issuer], audience, http_client=h.client)
    return dict((await validator.validate(token)).claims)


async def test_the_gateway_gets_a_token_for_the_upstream_naming_itself_as_actor(
    gw: Harness,
) -> None:
    subject = await caller_token(gw)
    response = await gw.client.post("/token", data=form(subject))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE and body["token_type"] == "Bearer"
    assert "refresh_token" not in body
    assert response.headers["cache-control"] == "no-store"
    claims = await verified(gw, body["access_token"], UPSTREAM)
    original = await verified(gw, subject, TOOLS)
    assert claims["sub"] == original["sub"] == "admin"
    assert claims["act"] == {"sub": "bastion-tools"}
    assert claims["client_id"] == "bastion-tools"
    assert claims["roles"] == original["roles"]
    assert claims["scope"] == "files:read weather:read"  # everything held that is offered
    assert claims["exp"] <= min(original["exp"], int(time.time()) + 120)
    (event,) = [
        e
        for e in await gw.all_events()
        if e["type"] == "token.issued" and e["details"].get("grant_type") == TOKEN_EXCHANGE
    ]
    assert event["principal"] == "admin" and event["client_id"] == "bastion-tools"
    assert event["details"]["aud"] == UPSTREAM
    assert event["details"]["act"] == {"sub": "bastion-tools"}
    assert event["details"]["subject_jti"] == original["jti"]


async def test_asking_for_less_gets_less(gw: Harness) -> None:
    response = await gw.client.post(
        "/token", data=form(await caller_token(gw), scope="weather:read")
    )
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "weather:read"


async def test_an_actor_chain_is_kept_and_the_gateway_wraps_it(gw: Harness) -> None:
    # A token that already says someone acts for the person (an agent): the exchanged
    # token names the gateway, acting for that agent, acting for the person.
    subject, _ = await gw.ctx.tokens.access_token(
        sub="admin", client_id="agent", resource=TOOLS, scopes=["weather:read"],
        roles=["admin"], act={"sub": "agent-7"},
    )  # fmt: skip
    response = await gw.client.post("/token", data=form(subject))
    assert response.status_code == 200, response.text
    claims = await verified(gw, response.json()["access_token"], UPSTREAM)
    assert claims["act"] == {"sub": "bastion-tools", "act": {"sub": "agent-7"}}


async def test_the_exchanged_token_never_outlives_the_callers(gw: Harness) -> None:
    subject, claims = await gw.ctx.tokens.access_token(
        sub="admin", client_id="c", resource=TOOLS, scopes=["weather:read"],
        roles=["admin"], ttl=5,
    )  # fmt: skip
    response = await gw.client.post("/token", data=form(subject))
    assert response.status_code == 200, response.text
    exchanged = await verified(gw, response.json()["access_token"], UPSTREAM)
    assert exchanged["exp"] <= claims["exp"]


async def _refused(h: Harness, data: dict[str, str], error: str, status: int = 400) -> str:
    before = await h.redis.keys("auth:at:*")
    response = await h.client.post("/token", data=data)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert sorted(await h.redis.keys("auth:at:*")) == sorted(before)  # nothing issued
    failed = [e for e in await h.all_events() if e["type"] == "oauth.request_failed"]
    assert failed[-1]["details"]["error"] == error
    assert failed[-1]["details"]["grant_type"] == TOKEN_EXCHANGE
    description: str = response.json()["error_description"]
    return description


async def test_a_client_that_is_not_the_gateway_may_not_exchange(gw: Harness) -> None:
    subject = await caller_token(gw)
    public = await gw.register()  # a DCR client holding the caller's token
    data = form(subject, client_id=public)
    del data["client_secret"]
    # Its registration does not include the grant: refused before anything is read.
    await _refused(gw, data, "unauthorized_client")
    wrong_secret = form(subject, client_secret="not-the-" + TOOLS_SECRET)
    await _refused(gw, wrong_secret, "invalid_client", 401)


@pytest.mark.parametrize(
    ("change", "error", "says"),
    [
        ({"resource": "https://elsewhere.example.test/mcp"}, "invalid_target", "not configured"),
        ({"resource": KEYS}, "invalid_target", "not configured"),
        ({"resource": TOOLS}, "invalid_target", "not configured"),
        ({"audience": "https://elsewhere.example.test/mcp"}, "invalid_target", "exactly one"),
        ({"scope": "weather:read files:write"}, "invalid_scope", "files:write"),
        ({"scope": "admin:users"}, "invalid_scope", "admin:users"),
        ({"subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}, "invalid_request", ""),
        ({"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
         "invalid_request", "only access tokens"),
        ({"actor_token": "x", "actor_token_type": ACCESS_TOKEN_TYPE}, "invalid_request", "actor"),
        ({"subject_token": "eyJhbGciOiJub25lIn0.e30."}, "invalid_grant", "not an access token"),
        ({"subject_token": ""}, "invalid_grant", "not an access token"),
    ],
)  # fmt: skip
async def test_a_bad_exchange_is_refused_and_issues_nothing(
    gw: Harness, change: dict[str, str], error: str, says: str
) -> None:
    data = form(await caller_token(gw, "weather:read"), **change)
    assert says in await _refused(gw, data, error)


async def test_an_upstream_cannot_be_reached_with_scope_it_does_not_offer(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, tmp_path, token_exchange_audiences={UPSTREAM: ["x:y"]})
    async with harness(settings) as h:
        description = await _refused(h, form(await caller_token(h)), "invalid_scope")
    assert "nothing that audience offers" in description


async def test_a_token_issued_for_another_resource_cannot_be_laundered(gw: Harness) -> None:
    keys_token = (await gw.tokens(scope="weather:read", resource=KEYS))["access_token"]
    assert "not issued to the gateway" in await _refused(gw, form(keys_token), "invalid_grant")


async def test_a_revoked_or_signed_out_callers_token_is_not_exchanged(gw: Harness) -> None:
    pair = await gw.tokens(scope="weather:read")
    revoked = pair["access_token"]
    done = await gw.client.post("/revoke", data={"token": revoked, "client_id": pair["client_id"]})
    assert done.status_code == 200
    assert "token revoked" in await _refused(gw, form(revoked), "invalid_grant")
    # A token outside any refresh family (as keys' exchanged ones are): only the
    # person's cut-off ends it.
    signed_out, _ = await gw.ctx.tokens.access_token(
        sub="admin", client_id="c", resource=TOOLS, scopes=["weather:read"], roles=["admin"]
    )
    await gw.ctx.tokens.revoke_user("admin")
    assert "signed out" in await _refused(gw, form(signed_out), "invalid_grant")


async def test_without_configured_audiences_there_is_no_exchange(h: Harness) -> None:
    response = await h.client.post("/token", data=form(await caller_token(h)))
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"
    metadata = (await h.client.get("/.well-known/oauth-authorization-server")).json()
    assert TOKEN_EXCHANGE not in metadata["grant_types_supported"]


async def test_discovery_advertises_the_grant_when_configured(gw: Harness) -> None:
    metadata = (await gw.client.get("/.well-known/oauth-authorization-server")).json()
    assert TOKEN_EXCHANGE in metadata["grant_types_supported"]


@pytest.mark.parametrize(
    ("audiences", "overrides", "says"),
    [
        ({TOOLS: ["weather:read"]}, {}, "one of our own resources"),
        ({"ftp://x.example": ["weather:read"]}, {}, "http(s) resource URI"),
        ({UPSTREAM: []}, {}, "name the scopes"),
        ({UPSTREAM: ["Not A Scope"]}, {}, "pattern"),
        ({UPSTREAM: ["weather:read"]}, {"tools_client_secret": None}, "AUTH_TOOLS_CLIENT_SECRET"),
    ],
)
def test_a_bad_exchange_configuration_stops_auth_at_start_up(
    redis_url: str, tmp_path: Path, audiences: dict[str, list[str]], overrides: dict[str, Any],
    says: str,
) -> None:  # fmt: skip
    with pytest.raises(ValueError, match=r".") as raised:
        make_settings(redis_url, tmp_path, token_exchange_audiences=audiences, **overrides)
    assert says in str(raised.value)
