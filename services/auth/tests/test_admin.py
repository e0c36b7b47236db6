from __future__ import annotations

import pytest
from services.auth.tests.helpers import ADMIN, TOOLS, Harness


async def _bearer(h: Harness, resource: str = ADMIN, **kw: str) -> dict[str, str]:
    body = await h.tokens(resource=resource, **kw)
    return {"authorization": f"Bearer {body['access_token']}"}


@pytest.mark.anyio
async def test_admin_api_needs_an_admin_resource_token(h: Harness) -> None:
    none = await h.client.get("/admin/users")
    assert none.status_code == 401 and none.json()["error"] == "invalid_token"
    wrong_aud = await h.client.get("/admin/users", headers=await _bearer(h, TOOLS))
    assert wrong_aud.status_code == 401
    events = await h.events("authn.failed")
    assert events[0]["outcome"] == "denied"
    await h.ctx.users.create("bob", "bob-password-12", ["premium"])
    h.client.cookies.clear()  # a new browser: sign in as bob
    weak = await h.client.get(
        "/admin/users", headers=await _bearer(h, username="bob", password="bob-password-12")
    )
    assert weak.status_code == 403 and weak.json()["error"] == "insufficient_scope"
    h.client.cookies.clear()
    ok = await h.client.get("/admin/users", headers=await _bearer(h))
    assert ok.status_code == 200
    assert {u["username"] for u in ok.json()["users"]} == {"admin", "bob"}
    assert "password_hash" not in ok.text


@pytest.mark.anyio
async def test_admin_creates_updates_and_signs_out_users(h: Harness) -> None:
    headers = await _bearer(h)
    created = await h.client.post(
        "/admin/users",
        headers=headers,
        json={"username": "dave", "password": "dave-password-12", "roles": ["user"]},
    )
    assert created.status_code == 201 and created.json()["roles"] == ["user"]
    dup = await h.client.post(
        "/admin/users",
        headers=headers,
        json={"username": "dave", "password": "dave-password-12", "roles": ["user"]},
    )
    assert dup.status_code == 400 and dup.json()["error"] == "invalid_request"
    bad_role = await h.client.post(
        "/admin/users",
        headers=headers,
        json={"username": "eve", "password": "eve-password-123", "roles": ["root"]},
    )
    assert bad_role.status_code == 400
    h.client.cookies.clear()
    dave = await h.tokens(username="dave", password="dave-password-12")
    revoked = await h.client.post("/admin/users/dave/revoke", headers=headers)
    assert revoked.status_code == 200 and revoked.json()["grants_revoked"] == 1
    record = await h.ctx.tokens.access_record(dave["access_token"])
    assert record is not None and await h.ctx.tokens.is_denied(record["jti"])
    assert (await h.refresh(dave["client_id"], dave["refresh_token"])).status_code == 400
    patched = await h.client.patch("/admin/users/dave", headers=headers, json={"disabled": True})
    assert patched.status_code == 200 and patched.json()["disabled"] is True
    assert (await h.events("user.created"))[-1]["details"]["username"] == "dave"
    assert (await h.events("user.updated"))[0]["details"]["disabled"] is True


@pytest.mark.anyio
async def test_a_revoked_admin_token_is_refused(h: Harness) -> None:
    body = await h.tokens(resource=ADMIN)
    await h.client.post(
        "/revoke", data={"client_id": body["client_id"], "token": body["access_token"]}
    )
    response = await h.client.get(
        "/admin/users", headers={"authorization": f"Bearer {body['access_token']}"}
    )
    assert response.status_code == 401


@pytest.mark.anyio
async def test_disabling_a_user_revokes_its_tokens(h: Harness) -> None:
    headers = await _bearer(h)
    await h.ctx.users.create("frank", "frank-password-1", ["user"])
    h.client.cookies.clear()
    frank = await h.tokens(username="frank", password="frank-password-1")
    patched = await h.client.patch("/admin/users/frank", headers=headers, json={"disabled": True})
    assert patched.status_code == 200
    record = await h.ctx.tokens.access_record(frank["access_token"])
    assert record is not None and await h.ctx.tokens.is_denied(record["jti"])
    refreshed = await h.refresh(frank["client_id"], frank["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    bad = await h.client.patch("/admin/users/frank", headers=headers, json={"disabled": "yes"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
