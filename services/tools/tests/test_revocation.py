"""A subject's cut-off (`bastion_common.subjects`, written by auth on disable, sign-out
everywhere and demotion) ends, in the same single Redis round trip as the rate limit,
every token issued before it, whoever issued it, and every API key made before it; the
next call is refused, not one after a cache expires (issue 22)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from services.tools.tests.helpers import (
    KEYS_ISSUER,
    Minter,
    Upstreams,
    open_session,
    post,
    rpc,
    serve,
    wait_for_event,
)

from bastion_common.subjects import KEYS_BEFORE, TOKENS_BEFORE, subject_key
from bastion_tools.app import create_app
from bastion_tools.settings import Settings

pytestmark = pytest.mark.anyio


async def _cut(redis_url: str, subject: str, field: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await redis.hset(subject_key(subject), field, repr(time.time()))
    finally:
        await redis.aclose()


async def test_tokens_issued_before_their_subject_was_cut_off_are_refused_at_the_next_call(
    make_settings: Callable[..., Settings], minter: Minter, redis_url: str
) -> None:
    from_auth = minter.token(sub="judy")
    from_keys = minter.token(sub="judy", iss=KEYS_ISSUER, client_id="apikey:k9")
    someone_else = minter.token(sub="karl")
    async with serve(create_app(make_settings())) as client:
        sessions = {t: await open_session(client, t) for t in (from_auth, from_keys, someone_else)}
        await _cut(redis_url, "judy", TOKENS_BEFORE)
        for token in (from_auth, from_keys):
            refused = await post(client, token, rpc("tools/list", {}, 2), session=sessions[token])
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"] == "invalid_token"
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        still = await post(
            client, someone_else, rpc("tools/list", {}, 2), session=sessions[someone_else]
        )
        assert still.status_code == 200
    await wait_for_event(redis_url, "authn.failed", principal="judy", reason="token revoked")


async def test_an_api_key_made_before_its_owner_was_signed_out_is_refused_despite_the_cache(
    make_settings: Callable[..., Settings], upstreams: Upstreams, redis_url: str
) -> None:
    api_key = f"mcp_{secrets.token_urlsafe(32)}"
    upstreams.api_keys[api_key] = {
        "key_id": "k7", "owner": "lena", "roles": ["user"], "permissions": ["weather:read"],
        "expires_at": "2099-01-01T00:00:00+00:00",
        "created_at": datetime.now(UTC).isoformat(),
    }  # fmt: skip
    # The longest cache allowed, more than the 1 s rule: the refusal must not wait for it.
    async with serve(create_app(make_settings(apikey_cache_seconds=5))) as client:
        session = await open_session(client, api_key)
        await _cut(redis_url, "lena", TOKENS_BEFORE)  # tokens only: the key still works
        ok = await post(client, api_key, rpc("tools/list", {}, 2), session=session)
        assert ok.status_code == 200
        await _cut(redis_url, "lena", KEYS_BEFORE)
        refused = await post(client, api_key, rpc("tools/list", {}, 3), session=session)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
    assert upstreams.introspections == 1
    await wait_for_event(redis_url, "authn.failed", principal="lena", presented="api_key")
