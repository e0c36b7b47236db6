"""`/v1/introspect`: the tools server's direct-key check, and the revocation feed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import anyio
import httpx2
import pytest
from fastapi import FastAPI
from services.keys.tests.helpers import (
    StandInAuth,
    bearer,
    create_key,
    random_key,
    serve,
    wait_for_event,
)

from bastion_common.redis import create_redis

pytestmark = pytest.mark.anyio


async def _introspect(
    keys: httpx2.AsyncClient, token: str, api_key: str, **extra: str
) -> httpx2.Response:
    return await keys.post(
        "/v1/introspect", json={"api_key": api_key, **extra}, headers=bearer(token)
    )


async def test_tools_learns_the_keys_principal_and_permissions(
    keys: httpx2.AsyncClient, auth: StandInAuth
) -> None:
    created = await create_key(keys, auth.token(), ["weather:read", "files:read"])
    reply = await _introspect(keys, auth.service_token(), created["api_key"])
    assert reply.status_code == 200
    body = reply.json()
    assert body == {
        "active": True,
        "key_id": created["key_id"],
        "owner": "alice",
        "roles": ["premium"],
        "permissions": ["files:read", "weather:read"],
        "expires_at": body["expires_at"],
        "created_at": body["created_at"],
    }
    assert datetime.fromisoformat(body["expires_at"]) == datetime.fromisoformat(
        created["expires_at"]
    )
    assert datetime.fromisoformat(body["created_at"]) <= datetime.now(UTC)


@pytest.mark.parametrize("presented", [random_key(), "mcp_x", "y" * 4000])
async def test_a_bad_key_is_inactive_and_nothing_more_is_said(
    keys: httpx2.AsyncClient, auth: StandInAuth, presented: str
) -> None:
    reply = await _introspect(keys, auth.service_token(), presented)
    assert reply.status_code == 200 and reply.json() == {"active": False}


async def test_only_allowlisted_services_may_introspect(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    created = await create_key(keys, auth.token(), ["weather:read"])
    for token in (auth.token(), auth.service_token("some-other-service")):
        reply = await _introspect(keys, token, created["api_key"])
        assert reply.status_code == 403 and reply.json()["error"] == "access_denied"
    await wait_for_event(redis_url, "authz.denied", client_id="some-other-service")
    assert (await _introspect(keys, "", created["api_key"])).status_code == 401


async def test_revocation_is_published_and_the_key_turns_inactive(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token()
    created = await create_key(keys, token, ["weather:read"])
    redis = create_redis(redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe("apikeys:revoked")
    try:
        await keys.delete(f"/v1/keys/{created['key_id']}", headers=bearer(token))
        with anyio.fail_after(1):  # the bound: every cache within a second
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if message is not None:
                    break
        assert message["data"] == created["key_id"].encode()
    finally:
        await pubsub.aclose()
        await redis.aclose()
    reply = await _introspect(keys, auth.service_token(), created["api_key"])
    assert reply.json() == {"active": False}
    event = await wait_for_event(redis_url, "apikey.presentation_failed", via="introspect")
    assert event.details["key_id"] == created["key_id"] and event.details["reason"] == "revoked"


async def test_an_old_key_in_its_overlap_reports_when_it_stops(
    keys: httpx2.AsyncClient, auth: StandInAuth
) -> None:
    token = auth.token()
    created = await create_key(keys, token, ["weather:read"])
    rotated = (
        await keys.post(f"/v1/keys/{created['key_id']}/rotate", headers=bearer(token))
    ).json()
    reply = (await _introspect(keys, auth.service_token(), created["api_key"])).json()
    assert reply["active"] is True
    assert datetime.fromisoformat(reply["expires_at"]) == datetime.fromisoformat(
        rotated["previous_valid_until"]
    )
    new = (await _introspect(keys, auth.service_token(), rotated["api_key"])).json()
    assert datetime.fromisoformat(new["expires_at"]) == datetime.fromisoformat(
        created["expires_at"]
    )


async def test_failures_are_limited_per_presenting_client_when_tools_names_it(
    make_app: Callable[..., FastAPI], auth: StandInAuth, redis_url: str
) -> None:
    async with serve(make_app(failed_presentations_per_ip=2)) as keys:
        service = auth.service_token()
        for _ in range(2):
            await _introspect(keys, service, random_key(), client_ip="203.0.113.5")
        reply = await _introspect(keys, service, random_key(), client_ip="203.0.113.5")
        assert reply.status_code == 429
        await wait_for_event(redis_url, "ratelimit.refused", ip="203.0.113.5")
        # Another client behind the same tools server is not affected.
        other = await _introspect(keys, service, random_key(), client_ip="203.0.113.6")
        assert other.status_code == 200 and other.json() == {"active": False}


async def test_the_key_is_never_echoed_in_an_error(
    keys: httpx2.AsyncClient, auth: StandInAuth
) -> None:
    key = random_key()
    reply = await keys.post(
        "/v1/introspect", json={"api_key": key, "extra": 1}, headers=bearer(auth.service_token())
    )
    assert reply.status_code == 400 and key not in reply.text


async def test_bad_keys_through_tools_do_not_lock_out_everyone_behind_it(
    make_app: Callable[..., FastAPI], auth: StandInAuth, redis_url: str
) -> None:
    async with serve(make_app(failed_presentations_per_ip=2)) as keys:
        created = await create_key(keys, auth.token(), ["weather:read"])
        service = auth.service_token()
        for _ in range(5):  # an attacker's junk, relayed by tools without client_ip
            assert (await _introspect(keys, service, random_key())).json() == {"active": False}
        good = await _introspect(keys, service, created["api_key"])
        assert good.status_code == 200 and good.json()["active"] is True
        await wait_for_event(redis_url, "apikey.presentation_failed", via="introspect")
