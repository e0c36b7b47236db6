"""Usage is counted in memory and folded into Redis in batches, not per request."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from services.keys.tests.helpers import StandInAuth, bearer, create_key, exchange, serve

from bastion_keys.deps import KeysContext

pytestmark = pytest.mark.anyio


async def test_use_count_and_last_used_arrive_with_the_flush(
    make_app: Callable[..., FastAPI], auth: StandInAuth
) -> None:
    app = make_app(usage_flush_seconds=300)
    async with serve(app) as keys:
        token = auth.token()
        created = await create_key(keys, token, ["weather:read"])
        for _ in range(5):
            assert (await exchange(keys, created["api_key"])).status_code == 200
        path = f"/v1/keys/{created['key_id']}"
        before = (await keys.get(path, headers=bearer(token))).json()
        assert before["use_count"] == 0 and before["last_used"] is None  # nothing written yet
        context: KeysContext = app.state.bastion.extra["keys"]
        await context.usage.flush()
        after = (await keys.get(path, headers=bearer(token))).json()
        assert after["use_count"] == 5 and after["last_used"] is not None


async def test_pending_usage_is_flushed_on_shutdown(
    make_app: Callable[..., FastAPI], auth: StandInAuth
) -> None:
    token = auth.token()
    async with serve(make_app(usage_flush_seconds=300)) as keys:
        created = await create_key(keys, token, ["weather:read"])
        await exchange(keys, created["api_key"])
    async with serve(make_app()) as keys:
        info = (await keys.get(f"/v1/keys/{created['key_id']}", headers=bearer(token))).json()
        assert info["use_count"] == 1


async def test_presentations_write_no_usage_to_redis_until_the_flush(
    make_app: Callable[..., FastAPI], auth: StandInAuth, redis_url: str
) -> None:
    from bastion_common.redis import create_redis

    async def hash_writes() -> int:
        stats = await redis.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("hset", "hincrby"))

    redis = create_redis(redis_url)
    app = make_app(usage_flush_seconds=300)
    try:
        async with serve(app) as keys:
            created = await create_key(keys, auth.token(), ["weather:read"])
            before = await hash_writes()
            for _ in range(20):
                assert (await exchange(keys, created["api_key"])).status_code == 200
            assert await hash_writes() == before
            context: KeysContext = app.state.bastion.extra["keys"]
            await context.usage.flush()
            assert await hash_writes() == before + 2  # one HINCRBY + one HSET for the batch
    finally:
        await redis.aclose()
