"""API keys (`mcp_...`) presented directly: checked with keys' introspection (with this
service's own token), cached briefly, dropped at once when keys announces a revocation,
refused while keys cannot answer."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import anyio
import httpx2
import pytest
from services.tools.tests.helpers import (
    KEYS_ISSUER,
    Upstreams,
    call_tool,
    open_session,
    post,
    rpc,
    serve,
    wait_for_event,
)

from bastion_common.contracts import APIKEY_REVOKED_CHANNEL
from bastion_common.redis import create_redis
from bastion_tools.app import create_app
from bastion_tools.settings import Settings

pytestmark = pytest.mark.anyio


def _key(upstreams: Upstreams, permissions: list[str], key_id: str = "k1") -> str:
    api_key = f"mcp_{secrets.token_urlsafe(32)}"
    upstreams.api_keys[api_key] = {
        "key_id": key_id, "owner": "robot-owner", "roles": ["user"],
        "permissions": permissions, "expires_at": "2099-01-01T00:00:00+00:00",
    }  # fmt: skip
    return api_key


async def test_an_active_key_works_with_its_permissions_only(
    make_settings: Callable[..., Settings], upstreams: Upstreams, redis_url: str
) -> None:
    api_key = _key(upstreams, ["weather:read"])
    async with serve(create_app(make_settings())) as client:
        session = await open_session(client, api_key)
        listed = await post(client, api_key, rpc("tools/list", {}, 2), session=session)
        assert [t["name"] for t in listed.json()["result"]["tools"]] == ["get_weather"]
        ok = await call_tool(client, api_key, session, "get_weather", {"city": "Bern"})
        assert ok.status_code == 200
        assert ok.headers["ratelimit-policy"].startswith('"principal";q=200;')
        refused = await call_tool(client, api_key, session, "list_files", {"directory": "."})
        assert refused.status_code == 403
    # Introspected with tools' own token for the keys resource, and cached.
    assert upstreams.introspections == 1
    assert all(api_key not in h for _, h in upstreams.seen_authorization)
    assert upstreams.issued[upstreams.seen_authorization[0][1].removeprefix("Bearer ")] == (
        KEYS_ISSUER
    )
    event = await wait_for_event(redis_url, "tool.called", principal="robot-owner")
    assert event.client_id == "apikey:k1"


async def test_an_unknown_key_is_refused_and_audited(
    tools: httpx2.AsyncClient, upstreams: Upstreams, redis_url: str
) -> None:
    reply = await post(tools, f"mcp_{secrets.token_urlsafe(32)}", rpc("tools/list"))
    assert reply.status_code == 401
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    await wait_for_event(redis_url, "authn.failed", presented="api_key")


async def test_a_revoked_key_stops_at_once_on_the_revocation_feed(
    make_settings: Callable[..., Settings], upstreams: Upstreams
) -> None:
    api_key = _key(upstreams, ["weather:read"], key_id="k-revoked")
    # A long cache: only the pub/sub message can explain a refusal within it.
    async with serve(create_app(make_settings(apikey_cache_seconds=5))) as client:
        session = await open_session(client, api_key)
        del upstreams.api_keys[api_key]
        started = time.monotonic()
        redis = create_redis(make_settings().redis_url.get_secret_value())
        await redis.publish(APIKEY_REVOKED_CHANNEL, "k-revoked")
        await redis.aclose()
        with anyio.fail_after(2):
            while (await post(client, api_key, rpc("tools/list", {}, 2), session=session)
                   ).status_code != 401:  # fmt: skip
                await anyio.sleep(0.02)
        assert time.monotonic() - started < 1.0


async def test_keys_unreachable_refuses_with_503(
    make_settings: Callable[..., Settings], upstreams: Upstreams
) -> None:
    api_key = _key(upstreams, ["weather:read"])
    async with serve(create_app(make_settings())) as client:
        upstreams.stop()
        reply = await post(client, api_key, rpc("tools/list"))
        assert reply.status_code == 503
        assert "cannot be checked" in reply.json()["error"]["message"]
