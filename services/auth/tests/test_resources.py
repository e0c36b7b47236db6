from __future__ import annotations

import pytest
from services.auth.tests.helpers import ADMIN, AUDIT, TOOLS, Harness, pkce_pair


@pytest.mark.anyio
@pytest.mark.parametrize("resource", [None, "http://localhost:9999/other", TOOLS + "/"])
async def test_missing_or_unknown_resource_is_refused_at_authorize(
    h: Harness, resource: str | None
) -> None:
    client_id = await h.register()
    response = await h.authorize(client_id, resource=resource)
    assert response.status_code == 400 and "location" not in response.headers
    events = await h.events("oauth.request_failed")
    assert events[0]["details"]["error"] == "invalid_target"


@pytest.mark.anyio
async def test_token_resource_must_match_the_authorization(h: Harness) -> None:
    client_id = await h.register()
    verifier, challenge = pkce_pair()
    code = await h.code(client_id, (verifier, challenge))
    response = await h.exchange(client_id, code, verifier, resource=AUDIT)
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"


@pytest.mark.anyio
async def test_missing_resource_at_token_is_refused(h: Harness) -> None:
    client_id = await h.register()
    verifier, challenge = pkce_pair()
    code = await h.code(client_id, (verifier, challenge))
    response = await h.client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "code": code,
            "redirect_uri": "http://127.0.0.1:53682/callback",
            "code_verifier": verifier,
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("resource", "scopes"),
    [
        (TOOLS, "admin:users files:read metrics:view weather:read"),
        (AUDIT, "metrics:view"),
        (ADMIN, "admin:users"),
    ],
)
async def test_token_aud_is_exactly_the_resource_and_scopes_are_cut(
    h: Harness, resource: str, scopes: str
) -> None:
    body = await h.tokens(
        resource=resource, scope="files:read weather:read metrics:view admin:users"
    )
    assert body["scope"] == scopes
    record = await h.ctx.tokens.access_record(body["access_token"])
    assert record is not None and record["aud"] == resource


@pytest.mark.anyio
async def test_a_user_gets_no_more_than_its_roles_allow(h: Harness) -> None:
    await h.ctx.users.create("guest1", "guest-password-123", ["guest"])
    body = await h.tokens(
        scope="files:delete weather:read", username="guest1", password="guest-password-123"
    )
    assert body["scope"] == "weather:read"
