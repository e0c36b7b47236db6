"""Audit events are batched briefly but never lost: held events reach the stream on their
timer, and all of them on shutdown."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from services.tools.tests.helpers import (
    Minter,
    audit_events,
    call_tool,
    open_session,
    serve,
    wait_for_event,
)

from bastion_tools.app import create_app
from bastion_tools.settings import Settings

pytestmark = pytest.mark.anyio


async def test_held_events_are_written_when_the_service_stops(
    make_settings: Callable[..., Settings], minter: Minter, redis_url: str
) -> None:
    # A linger far longer than the test: only the shutdown flush can write the event.
    async with serve(create_app(make_settings(audit_linger_seconds=1.0))) as client:
        token = minter.token(sub="leo")
        session = await open_session(client, token)
        reply = await call_tool(client, token, session, "get_weather", {"city": "Nice"})
        assert reply.status_code == 200
        assert await audit_events(redis_url, "tool.called") == []
    called = await audit_events(redis_url, "tool.called")
    assert [(e.principal, e.tool, e.outcome) for e in called] == [("leo", "get_weather", "success")]


async def test_held_events_are_written_on_their_timer(
    make_settings: Callable[..., Settings], minter: Minter, redis_url: str
) -> None:
    async with serve(create_app(make_settings(audit_linger_seconds=0.05))) as client:
        token = minter.token(sub="mia")
        session = await open_session(client, token)
        await call_tool(client, token, session, "get_weather", {"city": "Nice"})
        event = await wait_for_event(redis_url, "tool.called", principal="mia")
        assert event.request_id  # the request id of the call travels with its event


async def test_call_events_name_the_token_so_reuse_from_many_ips_can_be_seen(
    make_settings: Callable[..., Settings], minter: Minter, redis_url: str
) -> None:
    async with serve(create_app(make_settings(audit_linger_seconds=0.0))) as client:
        token = minter.token(sub="noa", jti="jti-noa-1")
        session = await open_session(client, token)
        await call_tool(client, token, session, "get_weather", {"city": "Nice"})
        event = await wait_for_event(redis_url, "tool.called", principal="noa")
    assert event.details["token_id"] == "jti-noa-1"
    assert token not in event.model_dump_json()
