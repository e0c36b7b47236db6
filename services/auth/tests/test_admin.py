from __future__ import annotations

import pytest
from services.auth.tests.helpers import ADMIN, TOOLS, TOOLS_SECRET, Harness

from bastion_common.subjects import subject_key


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


async def _service_bearer(h: Harness) -> dict[str, str]:
    """What tools holds: a client-credentials token of bastion-tools with admin:users."""
    response = await h.client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "bastion-tools",
            "client_secret": TOOLS_SECRET,
            "resource": ADMIN,
        },
    )
    assert response.status_code == 200 and response.json()["scope"] == "admin:users"
    return {"authorization": f"Bearer {response.json()['access_token']}"}


@pytest.mark.anyio
async def test_a_service_token_may_read_users_but_never_change_them(h: Harness) -> None:
    service = await _service_bearer(h)
    assert (await h.client.get("/admin/users", headers=service)).status_code == 200
    attempts = [
        h.client.post(
            "/admin/users",
            headers=service,
            json={"username": "mallory", "password": "mallory-pass-123", "roles": ["admin"]},
        ),
        h.client.patch("/admin/users/admin", headers=service, json={"disabled": True}),
        h.client.post("/admin/users/admin/revoke", headers=service),
        h.client.post("/admin/keys/rotate", headers=service),
    ]
    for attempt in attempts:
        refused = await attempt
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "access_denied"
        assert "error" in refused.headers["www-authenticate"]
    # Nothing changed: no new admin, the admin still enabled, no new signing key.
    assert await h.ctx.users.get("mallory") is None
    admin = await h.ctx.users.get("admin")
    assert admin is not None and not admin.disabled
    assert len(await h.ctx.keyring.keys()) == 1
    denied = await h.events("authz.denied", count=4)
    assert {e["details"]["method"] for e in denied} == {"POST", "PATCH"}
    assert all(e["principal"] == "bastion-tools" for e in denied)
    # A person holding the admin role still may.
    person = await _bearer(h)
    created = await h.client.post(
        "/admin/users",
        headers=person,
        json={"username": "mallory", "password": "mallory-pass-123", "roles": ["user"]},
    )
    assert created.status_code == 201


@pytest.mark.anyio
async def test_an_admin_token_stops_writing_once_its_person_is_demoted(h: Harness) -> None:
    await h.ctx.users.create("root2", "root2-password-1", ["admin"])
    h.client.cookies.clear()
    second = await _bearer(h, username="root2", password="root2-password-1")
    ok = await h.client.patch("/admin/users/root2", headers=second, json={"roles": ["user"]})
    assert ok.status_code == 200
    # Losing admin:users cut every token root2 held, this one included.
    again = await h.client.patch("/admin/users/root2", headers=second, json={"roles": ["admin"]})
    assert again.status_code == 401 and again.json()["error"] == "invalid_token"
    stored = await h.ctx.users.get("root2")
    assert stored is not None and stored.roles == ["user"]
    events = await h.events("authn.failed")
    assert events[-1]["details"]["reason"] == "subject signed out"


async def _introspect(h: Harness, token: str) -> bool:
    reply = await h.client.post(
        "/introspect", data={"token": token}, auth=("bastion-tools", TOOLS_SECRET)
    )
    assert reply.status_code == 200
    active: bool = reply.json()["active"]
    return active


@pytest.mark.anyio
@pytest.mark.parametrize("change", ["disable", "sign_out"])
async def test_disable_and_sign_out_end_tokens_that_have_no_refresh_token(
    h: Harness, change: str
) -> None:
    headers = await _bearer(h)
    await h.ctx.users.create("frank", "frank-password-1", ["user"])
    no_refresh = await h.register(grant_types=["authorization_code"])
    h.client.cookies.clear()
    frank = await h.tokens(no_refresh, username="frank", password="frank-password-1")
    assert "refresh_token" not in frank
    h.client.cookies.clear()
    with_refresh = await h.tokens(username="frank", password="frank-password-1")
    assert await _introspect(h, frank["access_token"])
    if change == "disable":
        done = await h.client.patch("/admin/users/frank", headers=headers, json={"disabled": True})
    else:
        done = await h.client.post("/admin/users/frank/revoke", headers=headers)
    assert done.status_code == 200
    assert not await _introspect(h, frank["access_token"])
    assert not await _introspect(h, with_refresh["access_token"])
    assert not await _introspect(h, with_refresh["refresh_token"])
    state = await h.redis.hgetall(subject_key("frank"))
    assert float(state[b"tokens_before"]) >= float(state[b"keys_before"]) > 0
