"""The key management API: creation, listing, ownership, delegation limits, callers."""

from __future__ import annotations

import hashlib

import httpx2
import pytest
from services.keys.tests.helpers import (
    ADMIN,
    TOOLS_RESOURCE,
    StandInAuth,
    audit_events,
    bearer,
    create_key,
    wait_for_event,
)

from bastion_common.redis import create_redis
from bastion_common.tokens import denylist_key

pytestmark = pytest.mark.anyio


async def _all_redis_bytes(redis_url: str) -> bytes:
    """Every key name and value in Redis, of every type, concatenated."""
    redis = create_redis(redis_url)
    out: list[bytes] = []
    try:
        async for name in redis.scan_iter(count=1000):
            out.append(name)
            kind = (await redis.type(name)).decode()
            if kind == "string":
                out.append(await redis.get(name) or b"")
            elif kind == "hash":
                for k, v in (await redis.hgetall(name)).items():
                    out += [k, v]
            elif kind == "set":
                out += list(await redis.smembers(name))
            elif kind == "zset":
                out += [m for m, _ in await redis.zrange(name, 0, -1, withscores=True)]
            elif kind == "stream":
                for _, fields in await redis.xrange(name):
                    for k, v in fields.items():
                        out += [k, v]
            else:
                raise AssertionError(f"unexpected Redis type {kind} at {name!r}")
    finally:
        await redis.aclose()
    return b"\n".join(out)


async def test_creation_shows_the_key_once_and_never_again(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token()
    created = await create_key(keys, token, ["weather:read", "files:read"], name="nightly ci")
    api_key = created["api_key"]
    assert api_key.startswith("mcp_") and len(api_key) == 47
    assert created["permissions"] == ["files:read", "weather:read"]

    listing = await keys.get("/v1/keys", headers=bearer(token))
    one = await keys.get(f"/v1/keys/{created['key_id']}", headers=bearer(token))
    assert listing.status_code == 200 and one.status_code == 200
    for reply in (listing, one):
        assert api_key not in reply.text
        assert "api_key" not in reply.text and "hash" not in reply.text
    assert listing.json()[0]["key_id"] == created["key_id"]
    assert one.json()["status"] == "active" and one.json()["owner"] == "alice"
    event = await wait_for_event(redis_url, "apikey.created", key_id=created["key_id"])
    assert event.principal == "alice" and api_key not in event.model_dump_json()


async def test_the_store_never_holds_the_key_in_clear(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token()
    created = await create_key(keys, token, ["weather:read"])
    rotated = (
        await keys.post(f"/v1/keys/{created['key_id']}/rotate", headers=bearer(token))
    ).json()
    await wait_for_event(redis_url, "apikey.rotated", key_id=created["key_id"])
    dump = await _all_redis_bytes(redis_url)
    assert created["key_id"].encode() in dump  # the scan does see the key's records
    for api_key in (created["api_key"], rotated["api_key"]):
        secret_part = api_key.removeprefix("mcp_")
        assert secret_part.encode() not in dump
        assert hashlib.sha256(api_key.encode()).hexdigest().encode() not in dump
    assert b"PRIVATE KEY" not in dump  # the signing key is sealed, not PEM


async def test_asking_for_more_than_the_token_holds_is_refused(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token(scope="weather:read", roles=["premium"])
    reply = await keys.post(
        "/v1/keys",
        json={"name": "x", "permissions": ["weather:read", "files:write"]},
        headers=bearer(token),
    )
    assert reply.status_code == 403
    assert reply.json()["error"] == "insufficient_scope"
    event = await wait_for_event(redis_url, "authz.denied", action="apikey.create")
    assert event.outcome == "denied" and event.details["missing"] == ["files:write"]
    assert (await keys.get("/v1/keys", headers=bearer(token))).json() == []


async def test_scopes_beyond_the_callers_roles_are_refused(
    keys: httpx2.AsyncClient, auth: StandInAuth
) -> None:
    # A token carrying admin scopes for a user whose roles do not grant them.
    token = auth.token(scope=ADMIN, roles=["user"])
    reply = await keys.post(
        "/v1/keys", json={"name": "x", "permissions": ["files:delete"]}, headers=bearer(token)
    )
    assert reply.status_code == 403 and reply.json()["error"] == "insufficient_scope"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "x", "permissions": ["root:all"]}, "unknown permissions"),
        ({"name": "x" * 65, "permissions": ["weather:read"]}, "name must be"),
        ({"name": "bad\nname", "permissions": ["weather:read"]}, "name must be"),
        ({"name": "x", "permissions": ["weather:read"], "expires_in_days": 366}, "at most 365"),
        ({"name": "x", "permissions": []}, "permissions"),
        ({"name": "x", "permissions": ["weather:read"], "owner": "bob"}, "owner"),
        ({"name": "x", "permissions": ["weather:read"], "expires_in_days": 0}, "expires_in"),
    ],
)
async def test_bad_creation_input_gets_a_clear_error_and_creates_nothing(
    keys: httpx2.AsyncClient, auth: StandInAuth, body: dict[str, object], fragment: str
) -> None:
    token = auth.token()
    reply = await keys.post("/v1/keys", json=body, headers=bearer(token))
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == "invalid_request"
    assert fragment in reply.json()["error_description"]
    assert (await keys.get("/v1/keys", headers=bearer(token))).json() == []


async def test_a_malformed_body_is_a_400_that_does_not_echo_the_input(
    keys: httpx2.AsyncClient, auth: StandInAuth
) -> None:
    reply = await keys.post(
        "/v1/keys",
        content=b'{"name": "mcp_SECRETSECRETSECRETSECRET", "permissions": 7}',
        headers={**bearer(auth.token()), "Content-Type": "application/json"},
    )
    assert reply.status_code == 400
    assert "SECRETSECRET" not in reply.text and "Traceback" not in reply.text


async def test_default_expiry_is_ninety_days(keys: httpx2.AsyncClient, auth: StandInAuth) -> None:
    created = await create_key(keys, auth.token(), ["weather:read"])
    info = (await keys.get(f"/v1/keys/{created['key_id']}", headers=bearer(auth.token()))).json()
    from datetime import datetime

    lifetime = datetime.fromisoformat(info["expires_at"]) - datetime.fromisoformat(
        info["created_at"]
    )
    assert lifetime.days == 90


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic YWxpY2U6cHc="}, {"Authorization": "Bearer not-a-jwt"}],
)
async def test_calls_without_a_valid_bearer_token_are_refused(
    keys: httpx2.AsyncClient, redis_url: str, headers: dict[str, str]
) -> None:
    reply = await keys.get("/v1/keys", headers=headers)
    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_token"
    assert reply.headers["www-authenticate"].startswith("Bearer")
    event = await wait_for_event(redis_url, "authn.failed", ip="10.0.0.9")
    assert event.outcome == "failure"


async def test_a_token_for_another_resource_is_refused(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    reply = await keys.get("/v1/keys", headers=bearer(auth.token(aud=TOOLS_RESOURCE)))
    assert reply.status_code == 401
    assert "not meant for this resource" in reply.json()["error_description"]
    await wait_for_event(redis_url, "authn.failed", reason="token is not meant for this resource")


async def test_a_token_signed_by_someone_else_is_refused(keys: httpx2.AsyncClient) -> None:
    impostor = StandInAuth()  # same kid and issuer, different private key
    reply = await keys.get("/v1/keys", headers=bearer(impostor.token()))
    assert reply.status_code == 401 and reply.json()["error"] == "invalid_token"


async def test_a_revoked_token_is_refused(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token(jti="revoked-jti")
    assert (await keys.get("/v1/keys", headers=bearer(token))).status_code == 200
    redis = create_redis(redis_url)
    await redis.set(denylist_key("revoked-jti"), "1", ex=300)
    await redis.aclose()
    reply = await keys.get("/v1/keys", headers=bearer(token))
    assert reply.status_code == 401 and reply.json()["error_description"] == "token revoked"
    await wait_for_event(redis_url, "authn.failed", reason="token revoked", principal="alice")


async def test_someone_elses_key_is_invisible_to_a_non_admin(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    created = await create_key(keys, auth.token("alice"), ["weather:read"])
    mallory = auth.token("mallory")
    path = f"/v1/keys/{created['key_id']}"
    for reply in (
        await keys.get(path, headers=bearer(mallory)),
        await keys.delete(path, headers=bearer(mallory)),
        await keys.post(f"{path}/rotate", headers=bearer(mallory)),
    ):
        assert reply.status_code == 404 and reply.json()["error"] == "not_found"
    listing = await keys.get("/v1/keys", params={"owner": "alice"}, headers=bearer(mallory))
    assert listing.status_code == 403 and listing.json()["error"] == "access_denied"
    await wait_for_event(redis_url, "authz.denied", principal="mallory", action="apikey.revoke")
    info = (await keys.get(path, headers=bearer(auth.token("alice")))).json()
    assert info["status"] == "active"


async def test_an_admin_lists_and_revokes_any_users_keys(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    created = await create_key(keys, auth.token("alice"), ["weather:read"])
    admin = auth.token("root", scope=ADMIN, roles=["admin"])
    listing = await keys.get("/v1/keys", params={"owner": "alice"}, headers=bearer(admin))
    assert [k["key_id"] for k in listing.json()] == [created["key_id"]]
    reply = await keys.delete(f"/v1/keys/{created['key_id']}", headers=bearer(admin))
    assert reply.status_code == 204
    event = await wait_for_event(redis_url, "apikey.revoked", key_id=created["key_id"])
    assert event.principal == "root" and event.details["owner"] == "alice"
    info = (await keys.get(f"/v1/keys/{created['key_id']}", headers=bearer(admin))).json()
    assert info["status"] == "revoked"


async def test_an_admin_token_without_admin_scope_is_not_an_admin(
    keys: httpx2.AsyncClient, auth: StandInAuth
) -> None:
    await create_key(keys, auth.token("alice"), ["weather:read"])
    narrow = auth.token("root", scope="weather:read", roles=["admin"])
    listing = await keys.get("/v1/keys", params={"owner": "alice"}, headers=bearer(narrow))
    assert listing.status_code == 403


async def test_revoking_twice_is_harmless_and_audited_once(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token()
    created = await create_key(keys, token, ["weather:read"])
    for _ in range(2):
        reply = await keys.delete(f"/v1/keys/{created['key_id']}", headers=bearer(token))
        assert reply.status_code == 204
    await wait_for_event(redis_url, "apikey.revoked", key_id=created["key_id"])
    assert len(await audit_events(redis_url, "apikey.revoked")) == 1


async def test_a_revoked_key_cannot_be_rotated(keys: httpx2.AsyncClient, auth: StandInAuth) -> None:
    token = auth.token()
    created = await create_key(keys, token, ["weather:read"])
    await keys.delete(f"/v1/keys/{created['key_id']}", headers=bearer(token))
    reply = await keys.post(f"/v1/keys/{created['key_id']}/rotate", headers=bearer(token))
    assert reply.status_code == 409


async def test_an_owner_cannot_hold_more_than_the_configured_number_of_keys(
    make_app: object, auth: StandInAuth
) -> None:
    from services.keys.tests.helpers import serve

    app = make_app(max_keys_per_owner=2)  # type: ignore[operator]
    async with serve(app) as client:
        token = auth.token()
        for _ in range(2):
            await create_key(client, token, ["weather:read"])
        reply = await client.post(
            "/v1/keys", json={"name": "x", "permissions": ["weather:read"]}, headers=bearer(token)
        )
        assert reply.status_code == 409 and reply.json()["error"] == "limit_reached"


async def test_unknown_key_ids_are_404(keys: httpx2.AsyncClient, auth: StandInAuth) -> None:
    token = auth.token()
    for key_id in ("k_0000000000000000", "../../etc", "x" * 20):
        reply = await keys.get(f"/v1/keys/{key_id}", headers=bearer(token))
        assert reply.status_code == 404, key_id


async def test_when_redis_is_down_every_check_fails_closed(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_server: object
) -> None:
    from services.keys.tests.helpers import exchange

    token = auth.token()
    created = await create_key(keys, token, ["weather:read"])
    redis_server.stop()  # type: ignore[attr-defined]
    try:
        replies = [
            await exchange(keys, created["api_key"]),
            await keys.get("/v1/keys", headers=bearer(token)),
            await keys.post(
                "/v1/introspect",
                json={"api_key": created["api_key"]},
                headers=bearer(auth.service_token()),
            ),
        ]
    finally:
        redis_server.start()  # type: ignore[attr-defined]
    for reply in replies:
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"] == "temporarily_unavailable"
        assert "Traceback" not in reply.text and "redis" not in reply.text.lower()
    # The test Redis keeps nothing across a restart; the service answers again at once.
    assert (await keys.get("/v1/keys", headers=bearer(token))).status_code == 200


async def test_the_bearer_scheme_is_documented(keys: httpx2.AsyncClient) -> None:
    spec = (await keys.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/keys"]["post"]["security"] == [{"HTTPBearer": []}]
