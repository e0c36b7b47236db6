"""A key is only as good as its owner is now (issue 22): auth's per-subject state
(`bastion_common.subjects`) ends the keys of a disabled or signed-out owner and cuts the
keys of a demoted one to the new roles, on the exchange and on introspection alike."""

from __future__ import annotations

import time

import httpx2
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from services.keys.tests.helpers import (
    StandInAuth,
    bearer,
    create_key,
    exchange,
    serve,
    tools_validator,
    wait_for_event,
)

from bastion_common.subjects import TOKENS_BEFORE, subject_key

pytestmark = pytest.mark.anyio


async def _introspect(keys: httpx2.AsyncClient, auth: StandInAuth, api_key: str) -> httpx2.Response:
    return await keys.post(
        "/v1/introspect", json={"api_key": api_key}, headers=bearer(auth.service_token())
    )


async def _set_subject(redis_url: str, owner: str, **fields: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await redis.hset(subject_key(owner), mapping=fields)
    finally:
        await redis.aclose()


async def test_a_disabled_owners_key_is_refused_everywhere(
    keys_app: FastAPI, auth: StandInAuth, redis_url: str
) -> None:
    async with serve(keys_app) as keys:
        created = await create_key(keys, auth.token(), ["weather:read"])
        assert (await exchange(keys, created["api_key"])).status_code == 200
        await _set_subject(redis_url, "alice", roles="premium", disabled="1")
        refused = await exchange(keys, created["api_key"])
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        assert (await _introspect(keys, auth, created["api_key"])).json() == {"active": False}
    event = await wait_for_event(
        redis_url, "apikey.presentation_failed", key_id=created["key_id"], reason="owner_disabled"
    )
    assert event.principal == "alice" and created["api_key"] not in event.model_dump_json()


async def test_keys_made_before_sign_out_everywhere_are_refused_and_later_ones_work(
    keys_app: FastAPI, auth: StandInAuth, redis_url: str
) -> None:
    async with serve(keys_app) as keys:
        old = await create_key(keys, auth.token(), ["weather:read"], name="old")
        await _set_subject(redis_url, "alice", roles="premium", keys_before=repr(time.time()))
        new = await create_key(keys, auth.token(), ["weather:read"], name="new")
        refused = await exchange(keys, old["api_key"])
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        assert (await _introspect(keys, auth, old["api_key"])).json() == {"active": False}
        assert (await exchange(keys, new["api_key"])).status_code == 200
        assert (await _introspect(keys, auth, new["api_key"])).json()["active"] is True
    await wait_for_event(
        redis_url, "apikey.presentation_failed", key_id=old["key_id"], reason="owner_signed_out"
    )


async def test_a_demoted_owners_key_is_cut_to_the_new_role(
    keys_app: FastAPI, auth: StandInAuth, redis_url: str
) -> None:
    async with serve(keys_app) as keys:
        created = await create_key(keys, auth.token(), ["weather:read", "files:write"])
        await _set_subject(redis_url, "alice", roles="guest", disabled="0")
        seen = (await _introspect(keys, auth, created["api_key"])).json()
        assert seen["permissions"] == ["weather:read"] and seen["roles"] == ["guest"]
        asked = await exchange(keys, created["api_key"], scope="files:write")
        assert asked.status_code == 400 and asked.json()["error"] == "invalid_scope"
        reply = await exchange(keys, created["api_key"])
        assert reply.status_code == 200 and reply.json()["scope"] == "weather:read"
        validator = tools_validator(keys_app)
        principal = await validator.validate(reply.json()["access_token"])
        assert principal.scopes == {"weather:read"} and principal.roles == ("guest",)
        await validator.aclose()


async def test_a_management_token_issued_before_the_owner_was_cut_off_is_refused(
    keys_app: FastAPI, auth: StandInAuth, redis_url: str
) -> None:
    token = auth.token()
    async with serve(keys_app) as keys:
        assert (await keys.get("/v1/keys", headers=bearer(token))).status_code == 200
        await _set_subject(redis_url, "alice", **{TOKENS_BEFORE: repr(time.time())})
        refused = await keys.get("/v1/keys", headers=bearer(token))
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
    await wait_for_event(redis_url, "authn.failed", principal="alice", reason="subject signed out")


async def test_a_subject_auth_never_wrote_keeps_the_keys_stored_roles(
    keys: httpx2.AsyncClient, auth: StandInAuth, redis_url: str
) -> None:
    created = await create_key(keys, auth.token("svc"), ["weather:read", "files:write"])
    seen = (await _introspect(keys, auth, created["api_key"])).json()
    assert seen["active"] is True and seen["permissions"] == ["files:write", "weather:read"]
    assert seen["roles"] == ["premium"]
