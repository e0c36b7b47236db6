"""The tools themselves: weather in Redis, argument validation (-32602 naming the field,
nothing changed, audited), the admin tools with this service's own token, and clear
errors while auth or audit are unreachable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from services.tools.tests.helpers import (
    Minter,
    Upstreams,
    call_tool,
    open_session,
    post,
    rpc,
    serve,
    wait_for_event,
)

from bastion_common.redis import create_redis
from bastion_tools.app import create_app
from bastion_tools.settings import Settings

pytestmark = pytest.mark.anyio

ADMIN_SCOPE = "weather:read weather:write admin:users metrics:view"


async def _session(tools: httpx2.AsyncClient, minter: Minter, sub: str = "ivy") -> tuple[str, str]:
    token = minter.token(sub=sub, roles=["admin"], scope=ADMIN_SCOPE)
    return token, await open_session(tools, token)


async def test_a_reported_observation_is_the_latest_for_its_city(
    tools: httpx2.AsyncClient, minter: Minter, redis_url: str
) -> None:
    token, session = await _session(tools, minter)
    empty = (await call_tool(tools, token, session, "get_weather", {"city": "Oslo"})).json()
    assert empty["result"]["structuredContent"] == {"city": "Oslo", "observation": None}
    report = {"city": "São Paulo", "temperature_c": 21.5, "condition": "rain"}
    stored = (await call_tool(tools, token, session, "report_weather", report)).json()
    assert stored["result"]["structuredContent"]["reported_by"] == "ivy"
    latest = (await call_tool(tools, token, session, "get_weather", {"city": "são paulo"})).json()
    observation = latest["result"]["structuredContent"]["observation"]
    assert observation["temperature_c"] == 21.5 and observation["condition"] == "rain"
    event = await wait_for_event(redis_url, "tool.called", tool="report_weather", principal="ivy")
    assert event.outcome == "success"
    assert event.details["arguments"] == report
    assert event.details["latency_ms"] >= 0
    assert event.client_id == "test-client" and event.ip == "10.0.0.7"


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("report_weather", {"city": "Oslo", "temperature_c": 200, "condition": "rain"},
         "temperature_c"),
        ("report_weather", {"city": "Oslo", "temperature_c": 5, "condition": "lava"}, "condition"),
        ("report_weather", {"city": "", "temperature_c": 5, "condition": "rain"}, "city"),
        ("report_weather", {"city": "x" * 65, "temperature_c": 5, "condition": "rain"}, "city"),
        ("report_weather", {"city": "<script>", "temperature_c": 5, "condition": "rain"}, "city"),
        ("report_weather", {"city": "Oslo", "condition": "rain"}, "temperature_c"),
        ("report_weather", {"city": "Oslo", "temperature_c": "hot", "condition": "rain"},
         "temperature_c"),
        ("get_weather", {"city": "Oslo", "extra": "field"}, "extra"),
        ("get_weather", {"city": ["Oslo"]}, "city"),
        ("get_security_audit", {"time_range": "2h"}, "time_range"),
    ],
)  # fmt: skip
async def test_invalid_arguments_get_invalid_params_naming_the_field_and_change_nothing(
    tool: str,
    arguments: dict[str, Any],
    field: str,
    tools: httpx2.AsyncClient,
    minter: Minter,
    redis_url: str,
) -> None:
    token, session = await _session(tools, minter, sub="judy")
    reply = await call_tool(tools, token, session, tool, arguments)
    assert reply.status_code == 200
    error = reply.json()["error"]
    assert error["code"] == -32602
    assert field in error["message"]
    assert error["data"]["tool"] == tool
    assert "<script>" not in error["message"]  # values are never echoed
    event = await wait_for_event(redis_url, "tool.invalid_params", principal="judy", tool=tool)
    assert field in event.details["fields"]
    redis = create_redis(redis_url)
    assert await redis.keys("weather:*") == []
    await redis.aclose()


@pytest.mark.parametrize("arguments", [["Oslo"], "Oslo", 7])
async def test_arguments_that_are_not_an_object_get_invalid_params_and_run_nothing(
    arguments: Any, tools: httpx2.AsyncClient, minter: Minter, redis_url: str
) -> None:
    token, session = await _session(tools, minter, sub="lena")
    reply = await post(tools, token, rpc("tools/call", {"name": "report_weather",
                                                        "arguments": arguments}),
                       session=session)  # fmt: skip
    error = reply.json()["error"]
    assert error["code"] == -32602
    assert "arguments: must be an object" in error["message"]
    event = await wait_for_event(redis_url, "tool.invalid_params", principal="lena",
                                 tool="report_weather")  # fmt: skip
    assert event.details["fields"] == ["arguments"]
    redis = create_redis(redis_url)
    assert await redis.keys("weather:*") == []
    await redis.aclose()


async def test_list_users_asks_auth_with_the_services_own_token(
    tools: httpx2.AsyncClient, minter: Minter, upstreams: Upstreams
) -> None:
    token, session = await _session(tools, minter)
    body = (await call_tool(tools, token, session, "list_users", {})).json()
    assert body["result"]["structuredContent"] == {
        "users": [{"username": "alice", "roles": ["user"], "disabled": False}]
    }
    assert "argon2" not in str(body)
    seen = dict(upstreams.seen_authorization)
    assert token not in seen["/admin/users"]
    assert upstreams.issued[seen["/admin/users"].removeprefix("Bearer ")] == (
        "https://auth.test/admin"
    )
    # The service token is cached: a second call asks for no new one.
    issued = len(upstreams.issued)
    await call_tool(tools, token, session, "list_users", {})
    assert len(upstreams.issued) == issued


async def test_get_security_audit_asks_audit_for_the_range(
    tools: httpx2.AsyncClient, minter: Minter, upstreams: Upstreams
) -> None:
    token, session = await _session(tools, minter)
    body = await call_tool(tools, token, session, "get_security_audit", {"time_range": "24h"})
    report = body.json()["result"]["structuredContent"]
    assert report == {"time_range": "24h", "report": {"range": "24h", "events": 3}}
    assert all(token not in header for _, header in upstreams.seen_authorization)


async def test_while_auth_and_audit_are_down_their_tools_fail_clearly_and_the_rest_works(
    make_settings: Callable[..., Settings], minter: Minter, upstreams: Upstreams, redis_url: str
) -> None:
    async with serve(create_app(make_settings())) as client:
        token, session = await _session(client, minter, sub="kim")
        upstreams.stop()
        users = (await call_tool(client, token, session, "list_users", {})).json()["result"]
        assert users["isError"] is True
        assert "unreachable" in users["content"][0]["text"]
        assert "Traceback" not in users["content"][0]["text"]
        report = await call_tool(client, token, session, "get_security_audit", {"time_range": "1h"})
        assert report.json()["result"]["isError"] is True
        weather = await call_tool(client, token, session, "get_weather", {"city": "Oslo"})
        assert weather.json()["result"].get("isError") is not True
        event = await wait_for_event(redis_url, "tool.called", tool="list_users", principal="kim")
        assert event.outcome == "error"


async def test_an_unknown_tool_is_an_error_and_costs_one_token(
    tools: httpx2.AsyncClient, minter: Minter
) -> None:
    token, session = await _session(tools, minter)
    reply = await call_tool(tools, token, session, "rm_rf", {})
    assert reply.status_code == 200
    body = reply.json()
    assert "error" in body or body["result"]["isError"] is True
