from __future__ import annotations

import pytest
from services.auth.tests.helpers import TOOLS_SECRET, Harness


@pytest.mark.anyio
async def test_revoked_access_token_is_denylisted(h: Harness) -> None:
    body = await h.tokens()
    response = await h.client.post(
        "/revoke", data={"client_id": body["client_id"], "token": body["access_token"]}
    )
    assert response.status_code == 200
    record = await h.ctx.tokens.access_record(body["access_token"])
    assert record is not None
    ttl = await h.redis.ttl(f"revoked:jti:{record['jti']}")
    assert 1700 < ttl <= 1801
    events = await h.events("token.revoked")
    assert events[0]["details"]["token_type"] == "access_token"


@pytest.mark.anyio
async def test_revoking_a_refresh_token_revokes_its_grant(h: Harness) -> None:
    body = await h.tokens()
    response = await h.client.post(
        "/revoke",
        data={
            "client_id": body["client_id"],
            "token": body["refresh_token"],
            "token_type_hint": "refresh_token",
        },
    )
    assert response.status_code == 200
    refreshed = await h.refresh(body["client_id"], body["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    record = await h.ctx.tokens.access_record(body["access_token"])
    assert record is not None and await h.ctx.tokens.is_denied(record["jti"])


@pytest.mark.anyio
async def test_a_client_cannot_revoke_another_clients_token(h: Harness) -> None:
    body = await h.tokens()
    other = await h.register()
    response = await h.client.post(
        "/revoke", data={"client_id": other, "token": body["access_token"]}
    )
    assert response.status_code == 200  # RFC 7009 §2.2: no oracle
    record = await h.ctx.tokens.access_record(body["access_token"])
    assert record is not None and not await h.ctx.tokens.is_denied(record["jti"])


@pytest.mark.anyio
async def test_introspection_needs_a_confidential_client(h: Harness) -> None:
    body = await h.tokens()
    public = await h.client.post(
        "/introspect", data={"client_id": body["client_id"], "token": body["access_token"]}
    )
    assert public.status_code == 401 and public.json()["error"] == "invalid_client"
    ok = await h.client.post(
        "/introspect", data={"token": body["access_token"]}, auth=("bastion-tools", TOOLS_SECRET)
    )
    assert ok.status_code == 200 and ok.json()["active"] is True
    assert ok.json()["sub"] == "admin"
    await h.client.post(
        "/revoke", data={"client_id": body["client_id"], "token": body["access_token"]}
    )
    gone = await h.client.post(
        "/introspect", data={"token": body["access_token"]}, auth=("bastion-tools", TOOLS_SECRET)
    )
    assert gone.json() == {"active": False}


@pytest.mark.anyio
async def test_introspection_of_refresh_tokens_follows_rotation(h: Harness) -> None:
    body = await h.tokens()
    auth = ("bastion-tools", TOOLS_SECRET)
    active = await h.client.post("/introspect", data={"token": body["refresh_token"]}, auth=auth)
    assert active.json()["active"] is True and active.json()["client_id"] == body["client_id"]
    await h.refresh(body["client_id"], body["refresh_token"])
    rotated = await h.client.post("/introspect", data={"token": body["refresh_token"]}, auth=auth)
    assert rotated.json() == {"active": False}


@pytest.mark.anyio
async def test_introspection_refuses_a_wrong_secret(h: Harness) -> None:
    response = await h.client.post(
        "/introspect", data={"token": "x"}, auth=("bastion-tools", "nope" * 10)
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    events = await h.events("authn.failed")
    assert events[0]["details"]["endpoint"] == "introspect"
