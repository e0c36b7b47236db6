"""Audit events are batched briefly but never lost: held events reach the stream on their
timer, and all of them on shutdown. What a call's arguments become in the record: each
event goes through a real AuditPublisher into a real Redis stream and is read back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from services.tools.tests.helpers import (
    Minter,
    audit_events,
    call_tool,
    open_session,
    serve,
    wait_for_event,
)

from bastion_common.auditor import Auditor
from bastion_common.logging import REDACTED, request_id_var
from bastion_common.publisher import AuditPublisher
from bastion_common.redis import create_redis
from bastion_tools.app import create_app
from bastion_tools.settings import Settings

pytestmark = pytest.mark.anyio

JWT = "eyJhbGciOiJFUzI1NiJ9." + "eyJzdWIiOiJhbGljZSJ9" * 10 + ".c2lnbmF0dXJlLXZhbHVl"
API_KEY = "mcp_" + "A1b2C3d4" * 6


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


@pytest.fixture
async def auditor(redis_url: str, tmp_path: Path) -> AsyncIterator[Auditor]:
    redis = create_redis(redis_url)
    publisher = AuditPublisher(redis, tmp_path / "spool.jsonl")
    await publisher.start()
    try:
        yield Auditor(publisher, "tools", linger=0)
    finally:
        await publisher.close()
        await redis.aclose()


async def recorded(auditor: Auditor, redis_url: str, who: str, arguments: Any) -> dict[str, Any]:
    auditor.emit("tool.called", "success", principal=who, tool="echo", arguments=arguments)
    event = await wait_for_event(redis_url, "tool.called", principal=who)
    summary: dict[str, Any] = event.details["arguments"]
    return summary


async def test_secrets_in_arguments_are_redacted_by_key_and_by_look(
    auditor: Auditor, redis_url: str
) -> None:
    args = recorded(
        auditor,
        redis_url,
        "keys",
        {"api_key": "hunter2", "content": "file body", "note": f"Bearer {API_KEY}", "city": "Oslo"},
    )
    summary = await args
    assert summary["api_key"] == REDACTED
    assert summary["content"] == REDACTED
    assert API_KEY not in summary["note"] and REDACTED in summary["note"]
    assert summary["city"] == "Oslo"


async def test_a_token_is_redacted_before_a_long_value_is_cut(
    auditor: Auditor, redis_url: str
) -> None:
    """Cut first, the token's first 200 characters (header and most of its claims) would
    no longer look like a token and would be kept."""
    value = "x" * 150 + JWT
    summary = await recorded(auditor, redis_url, "long", {"note": value})
    assert JWT[:20] not in summary["note"]
    assert summary["note"] == ("x" * 150 + REDACTED)


async def test_a_long_key_is_judged_whole_before_it_is_cut(
    auditor: Auditor, redis_url: str
) -> None:
    key = "k" * 70 + "_password"
    summary = await recorded(auditor, redis_url, "longkey", {key: "hunter2", "k" * 80: "fine"})
    assert summary == {key[:64]: REDACTED, "k" * 64: "fine"}


async def test_values_that_are_not_scalars_are_named_and_at_most_16_kept(
    auditor: Auditor, redis_url: str
) -> None:
    arguments: dict[str, Any] = {f"a{i}": i for i in range(20)}
    arguments["a0"] = {"password": "hunter2"}
    arguments["a1"] = ["x", JWT]
    summary = await recorded(auditor, redis_url, "shapes", arguments)
    assert len(summary) == 16
    assert (summary["a0"], summary["a1"], summary["a2"]) == ("<dict>", "<list>", 2)


async def test_a_held_event_keeps_the_request_id_and_time_of_its_call(
    redis_url: str, tmp_path: Path
) -> None:
    """Held events are rendered when they are handed over, outside the call's context:
    what they say must still be read when the call made them."""
    redis = create_redis(redis_url)
    publisher = AuditPublisher(redis, tmp_path / "spool.jsonl")
    await publisher.start()
    try:
        auditor = Auditor(publisher, "tools", linger=60)  # only flush() hands it over
        token = request_id_var.set("req-of-the-call")
        before = datetime.now(UTC)
        try:
            auditor.emit("tool.called", "success", principal="held", tool="echo")
        finally:
            request_id_var.reset(token)
        after = datetime.now(UTC)
        await asyncio.sleep(0.2)
        auditor.flush()
        event = await wait_for_event(redis_url, "tool.called", principal="held")
    finally:
        await publisher.close()
        await redis.aclose()
    assert event.request_id == "req-of-the-call"
    assert before - timedelta(microseconds=1) <= event.time <= after


async def test_an_event_of_an_unknown_type_is_refused_when_emitted(
    redis_url: str, tmp_path: Path
) -> None:
    redis = create_redis(redis_url)
    publisher = AuditPublisher(redis, tmp_path / "spool.jsonl")
    auditor = Auditor(publisher, "tools", linger=60)
    with pytest.raises(ValueError, match="unknown audit event type"):
        auditor.emit("tool.caled", "success")
    await redis.aclose()


async def test_an_event_whose_details_cannot_be_rendered_is_recorded_without_them(
    redis_url: str, tmp_path: Path
) -> None:
    redis = create_redis(redis_url)
    publisher = AuditPublisher(redis, tmp_path / "spool.jsonl")
    await publisher.start()
    looped: list[Any] = []
    looped.append(looped)  # redaction would walk it for ever
    try:
        auditor = Auditor(publisher, "tools", linger=60)
        auditor.emit("tool.called", "success", principal="loop", tool="echo", odd=looped)
        auditor.emit("tool.called", "success", principal="after", tool="echo", n=1)
        auditor.flush()
        broken = await wait_for_event(redis_url, "tool.called", principal="loop")
        after = await wait_for_event(redis_url, "tool.called", principal="after")
    finally:
        await publisher.close()
        await redis.aclose()
    assert broken.details == {"unrenderable": "RecursionError"}
    assert after.details == {"n": 1}  # the event held with it is whole
