"""RFC 8693 exchange: which keys get a token, and what that token is good for."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx2
import pytest
from fastapi import FastAPI
from services.keys.tests.helpers import (
    AUDIT_RESOURCE,
    KEYS_URL,
    TOKEN_EXCHANGE,
    StandInAuth,
    bearer,
    create_key,
    exchange,
    random_key,
    serve,
    tools_validator,
    wait_for_event,
)

from bastion_common.redis import create_redis
from bastion_common.tokens import denylist_key
from bastion_keys.store import record_key

pytestmark = pytest.mark.anyio


async def test_an_exchanged_token_is_accepted_by_tools_with_exactly_the_keys_permissions(
    keys_app: FastAPI, auth: StandInAuth, redis_url: str
) -> None:
    async with serve(keys_app) as keys:
        created = await create_key(keys, auth.token(), ["weather:read", "files:write"])
        reply = await exchange(keys, created["api_key"])
        assert reply.status_code == 200, reply.text
        assert reply.headers["cache-control"] == "no-store"
        body = reply.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 900
        assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"

        validator = tools_validator(keys_app)
        principal = await validator.validate(body["access_token"])
        assert principal.scopes == {"weather:read", "files:write"}
        assert principal.subject == "alice" and principal.issuer == KEYS_URL
        assert principal.client_id == f"apikey:{created['key_id']}"
        assert principal.roles == ("premium",)
        assert 895 <= principal.expires_at - principal.not_before <= 900
        await validator.aclose()
        event = await wait_for_event(redis_url, "apikey.exchanged", key_id=created["key_id"])
        assert event.client_id == f"apikey:{created['key_id']}"
        assert created["api_key"] not in event.model_dump_json()
        assert body["access_token"] not in event.model_dump_json()


@pytest.mark.parametrize("resource", [AUDIT_RESOURCE, KEYS_URL, "http://localhost:8001/admin"])
async def test_a_resource_that_does_not_trust_keys_tokens_is_refused_with_invalid_target(
    keys: httpx2.AsyncClient, auth: StandInAuth, resource: str
) -> None:
    # audit, keys itself and auth's admin API accept only auth's tokens: a keys-issued
    # token for them would be useless, so none is issued.
    admin = auth.token("root", scope="metrics:view weather:read admin:users", roles=["admin"])
    created = await create_key(keys, admin, ["metrics:view", "weather:read"])
    reply = await exchange(keys, created["api_key"], resource=resource)
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_target"
    assert "access_token" not in reply.json()


async def test_after_revocation_the_exchange_is_refused_and_issued_tokens_are_denylisted(
    keys_app: FastAPI, auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token()
    async with serve(keys_app) as keys:
        created = await create_key(keys, token, ["weather:read"])
        issued = await exchange(keys, created["api_key"])
        validator = tools_validator(keys_app)
        principal = await validator.validate(issued.json()["access_token"])
        await validator.aclose()

        assert (
            await keys.delete(f"/v1/keys/{created['key_id']}", headers=bearer(token))
        ).status_code == 204
        reply = await exchange(keys, created["api_key"])
        assert reply.status_code == 400
        assert reply.json() == {
            "error": "invalid_grant",
            "error_description": "the API key is not valid",
        }
        # The tools server checks this denylist entry on every call.
        redis = create_redis(redis_url)
        assert await redis.exists(denylist_key(principal.token_id)) == 1
        assert 0 < await redis.ttl(denylist_key(principal.token_id)) <= 900
        await redis.aclose()
        event = await wait_for_event(redis_url, "apikey.presentation_failed", reason="revoked")
        assert event.details["key_id"] == created["key_id"] and event.ip == "10.0.0.9"


async def test_an_expired_key_is_refused(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    created = await create_key(keys, auth.token(), ["weather:read"])
    redis = create_redis(redis_url)
    await redis.hset(record_key(created["key_id"]), "expires_at", "1000.0")
    await redis.aclose()
    reply = await exchange(keys, created["api_key"])
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_grant"
    await wait_for_event(redis_url, "apikey.presentation_failed", reason="expired")


async def test_a_rotated_key_works_during_the_overlap_and_stops_by_itself_after(
    make_app: Callable[..., FastAPI], auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token()
    async with serve(make_app(rotation_overlap_seconds=1)) as keys:
        created = await create_key(keys, token, ["weather:read"])
        rotated = await keys.post(f"/v1/keys/{created['key_id']}/rotate", headers=bearer(token))
        assert rotated.status_code == 200
        new_key = rotated.json()["api_key"]
        assert new_key != created["api_key"] and rotated.json()["key_id"] == created["key_id"]
        assert (await exchange(keys, created["api_key"])).status_code == 200
        assert (await exchange(keys, new_key)).status_code == 200
        with anyio.fail_after(3):
            while (await exchange(keys, created["api_key"])).status_code == 200:
                await anyio.sleep(0.1)
        reply = await exchange(keys, created["api_key"])
        assert reply.status_code == 400 and reply.json()["error"] == "invalid_grant"
        assert (await exchange(keys, new_key)).status_code == 200
        await wait_for_event(redis_url, "apikey.rotated", key_id=created["key_id"])
        await wait_for_event(
            redis_url, "apikey.presentation_failed", reason="rotated", key_id=created["key_id"]
        )


async def test_with_no_overlap_the_old_key_stops_at_once_and_caches_are_told(
    make_app: Callable[..., FastAPI], auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token()
    redis = create_redis(redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe("apikeys:revoked")
    async with serve(make_app(rotation_overlap_seconds=0)) as keys:
        created = await create_key(keys, token, ["weather:read"])
        rotated = await keys.post(f"/v1/keys/{created['key_id']}/rotate", headers=bearer(token))
        assert (await exchange(keys, created["api_key"])).status_code == 400
        assert (await exchange(keys, rotated.json()["api_key"])).status_code == 200
        with anyio.fail_after(1):
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is not None:
                    break
        assert message["data"] == created["key_id"].encode()
    await pubsub.aclose()
    await redis.aclose()


async def test_rotating_twice_ends_the_first_keys_overlap(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token()
    created = await create_key(keys, token, ["weather:read"])
    second = (await keys.post(f"/v1/keys/{created['key_id']}/rotate", headers=bearer(token))).json()
    third = (await keys.post(f"/v1/keys/{created['key_id']}/rotate", headers=bearer(token))).json()
    assert (await exchange(keys, created["api_key"])).status_code == 400
    assert (await exchange(keys, second["api_key"])).status_code == 200
    assert (await exchange(keys, third["api_key"])).status_code == 200


@pytest.mark.parametrize(
    ("presented", "reason"),
    [
        ("mcp_" + "A" * 44, "too_long"),
        ("x" * 2000, "too_long"),
        ("mcp_short", "malformed"),
        ("key_" + "A" * 43, "malformed"),
        ("mcp_" + "A" * 42 + "!", "malformed"),
        ("mcp_" + "A" * 42 + "\u00e9", "malformed"),
        (random_key(), "unknown"),
    ],
)
async def test_malformed_too_long_and_unknown_keys_are_refused(
    keys: httpx2.AsyncClient, redis_url: str, presented: str, reason: str
) -> None:
    reply = await exchange(keys, presented)
    assert reply.status_code == 400
    assert reply.json() == {
        "error": "invalid_grant",
        "error_description": "the API key is not valid",
    }
    assert reply.headers["cache-control"] == "no-store"
    event = await wait_for_event(redis_url, "apikey.presentation_failed", reason=reason)
    assert event.details["key_id"] is None and event.ip == "10.0.0.9"
    assert presented not in event.model_dump_json()


async def test_a_near_miss_of_a_real_key_is_unknown(
    keys: httpx2.AsyncClient, auth: StandInAuth
) -> None:
    created = await create_key(keys, auth.token(), ["weather:read"])
    real = created["api_key"]
    flipped = real[:-1] + ("A" if real[-1] != "A" else "B")
    assert (await exchange(keys, flipped)).status_code == 400
    assert (await exchange(keys, real)).status_code == 200


async def test_repeated_failures_from_one_address_are_rate_limited_but_a_good_key_is_not(
    make_app: Callable[..., FastAPI], auth: StandInAuth, redis_url: str
) -> None:
    app = make_app(failed_presentations_per_ip=3)
    async with serve(app) as keys:
        created = await create_key(keys, auth.token(), ["weather:read"])
        for _ in range(3):
            assert (await exchange(keys, random_key())).status_code == 400
        reply = await exchange(keys, random_key())
        assert reply.status_code == 429 and reply.json()["error"] == "rate_limited"
        assert reply.headers["retry-after"] == "60"
        # A good key from that address still works (a NAT or proxy shared with the
        # attacker must not lock everyone out), and junk stays refused after it ...
        assert (await exchange(keys, created["api_key"])).status_code == 200
        assert (await exchange(keys, random_key())).status_code == 429
        assert (await exchange(keys, "not-even-a-key")).status_code == 429
        await wait_for_event(redis_url, "ratelimit.refused", ip="10.0.0.9")
    # ... and another address is unaffected.
    async with serve(app, ip="10.0.0.10") as other:
        assert (await exchange(other, created["api_key"])).status_code == 200


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"resource": ""}, "invalid_target"),
        ({"resource": "https://evil.example/mcp"}, "invalid_target"),
        (
            {"subject_token_type": "urn:ietf:params:oauth:token-type:access_token"},
            "invalid_request",
        ),
        ({"actor_token": "x"}, "invalid_request"),
        ({"scope": "files:delete"}, "invalid_scope"),
    ],
)
async def test_bad_exchange_requests_get_rfc6749_errors(
    keys: httpx2.AsyncClient, auth: StandInAuth, fields: dict[str, str], error: str
) -> None:
    created = await create_key(keys, auth.token(), ["weather:read"])
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": created["api_key"],
        "subject_token_type": "urn:mcp-secure:api-key",
        "resource": "http://localhost:8003/mcp",
        **fields,
    }
    reply = await keys.post("/token", data=form)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == error and reply.json()["error_description"]
    assert reply.headers["cache-control"] == "no-store"


async def test_a_repeated_parameter_is_refused(keys: httpx2.AsyncClient, auth: StandInAuth) -> None:
    created = await create_key(keys, auth.token(), ["weather:read"])
    body = (
        f"grant_type={TOKEN_EXCHANGE}&subject_token={created['api_key']}"
        "&subject_token_type=urn:mcp-secure:api-key"
        "&resource=http://localhost:8003/mcp&resource=http://localhost:8004"
    )
    reply = await keys.post(
        "/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_request"


async def test_a_json_body_is_refused(keys: httpx2.AsyncClient) -> None:
    reply = await keys.post("/token", json={"grant_type": TOKEN_EXCHANGE})
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_request"


async def test_scope_narrows_the_token(keys_app: FastAPI, auth: StandInAuth) -> None:
    async with serve(keys_app) as keys:
        created = await create_key(keys, auth.token(), ["weather:read", "files:read"])
        reply = await exchange(keys, created["api_key"], scope="files:read")
        validator = tools_validator(keys_app)
        assert (await validator.validate(reply.json()["access_token"])).scopes == {"files:read"}
        await validator.aclose()


async def test_the_token_never_outlives_its_key(
    keys_app: FastAPI, auth: StandInAuth, redis_url: str
) -> None:
    import time

    async with serve(keys_app) as keys:
        created = await create_key(keys, auth.token(), ["weather:read"])
        redis = create_redis(redis_url)
        await redis.hset(record_key(created["key_id"]), "expires_at", repr(time.time() + 120))
        await redis.aclose()
        reply = await exchange(keys, created["api_key"])
        assert 110 <= reply.json()["expires_in"] <= 120


async def test_a_form_with_too_many_fields_is_refused(keys: httpx2.AsyncClient) -> None:
    body = "&".join(f"f{i}=x" for i in range(50))
    reply = await keys.post(
        "/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_request"
    assert reply.headers["cache-control"] == "no-store"


async def test_revoking_a_rotated_key_stops_the_old_secret_too(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token()
    created = await create_key(keys, token, ["weather:read"])
    path = f"/v1/keys/{created['key_id']}"
    rotated = (await keys.post(f"{path}/rotate", headers=bearer(token))).json()
    assert (await exchange(keys, created["api_key"])).status_code == 200  # in its overlap
    assert (await keys.delete(path, headers=bearer(token))).status_code == 204
    for api_key in (created["api_key"], rotated["api_key"]):
        assert (await exchange(keys, api_key)).status_code == 400


async def test_no_key_or_token_reaches_the_logs(
    keys: httpx2.AsyncClient, auth: StandInAuth, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await create_key(keys, auth.token(), ["weather:read"])
    issued = (await exchange(keys, created["api_key"])).json()["access_token"]
    unknown = random_key()
    await exchange(keys, unknown)
    await keys.post(
        "/v1/introspect", json={"api_key": unknown}, headers=bearer(auth.service_token())
    )
    out = capsys.readouterr()
    logs = out.out + out.err
    assert "path=/token" in logs or '"/token"' in logs  # the request lines are captured
    for secret in (created["api_key"], unknown, issued):
        assert secret.removeprefix("mcp_") not in logs
