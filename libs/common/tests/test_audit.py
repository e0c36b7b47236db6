"""The audit publisher never drops an event: Redis stopped under load, spool replayed in
order, new events queued behind the spool, a spool left by a closed process replayed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic_core import to_json
from redis.asyncio import Redis

from bastion_common.audit import AUDIT_STREAM, AuditEvent
from bastion_common.logging import REDACTED, request_id_var
from bastion_common.publisher import AuditPublisher
from bastion_common.redis import create_redis
from tests.redis_process import free_port


def _event(n: int) -> str:
    return AuditEvent.trusted_json("tool.called", "test", "success", details={"n": n})


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_url)
    yield client
    await client.aclose()


async def _numbers(redis: Redis) -> list[int]:
    entries = await redis.xrange(AUDIT_STREAM)
    return [e.details["n"] for _, f in entries for e in AuditEvent.all_from_stream_fields(f)]


async def _wait_for(redis: Redis, count: int, publisher: AuditPublisher) -> None:
    with anyio.fail_after(15):
        while publisher.spooled or len(await _numbers(redis)) < count:
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_redis_stopped_under_load_loses_nothing_and_keeps_order(
    redis: Redis, redis_server: Any, tmp_path: Path
) -> None:
    publisher = AuditPublisher(redis, tmp_path / "spool.jsonl", retry_interval=0.05)
    await publisher.start()
    try:
        for n in range(500):
            publisher.emit(_event(n))
        await publisher.drain()
        assert await _numbers(redis) == list(range(500))
        await redis.delete(AUDIT_STREAM)  # the test Redis keeps nothing across a restart

        redis_server.stop()
        try:
            for n in range(500, 2500):
                publisher.emit(_event(n))
                if n % 200 == 0:
                    await anyio.sleep(0.01)  # a steady stream, flushed in many batches
            await publisher.publish(_event(2500))
            await publisher.drain()
            assert publisher.spooled
        finally:
            redis_server.start()
        # New events keep coming while the spool is replayed: they queue behind it.
        for n in range(2501, 3000):
            publisher.emit(_event(n))
        await publisher.drain()
        await _wait_for(redis, 2500, publisher)
    finally:
        await publisher.close()
    numbers = await _numbers(redis)
    assert numbers == list(range(500, 3000))


@pytest.mark.anyio
async def test_a_spool_left_by_a_stopped_process_is_replayed_by_the_next_one(
    redis: Redis, redis_server: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.jsonl"
    redis_server.stop()
    try:
        first = AuditPublisher(redis, spool)
        await first.start()
        for n in range(100):
            first.emit(_event(n))
        await first.close()
    finally:
        redis_server.start()
    assert spool.stat().st_size > 0
    second = AuditPublisher(redis, spool, retry_interval=0.05)
    await second.start()
    try:
        await _wait_for(redis, 100, second)
    finally:
        await second.close()
    assert await _numbers(redis) == list(range(100))


@pytest.mark.anyio
async def test_a_torn_spool_line_is_skipped_and_the_rest_replayed(
    redis: Redis, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.jsonl"
    spool.write_text(_event(1) + "\n" + '{"torn": ' + "\n" + _event(2) + "\n")
    publisher = AuditPublisher(redis, spool, retry_interval=0.05)
    await publisher.start()
    try:
        await _wait_for(redis, 2, publisher)
    finally:
        await publisher.close()
    assert await _numbers(redis) == [1, 2]


def test_a_trusted_json_line_is_an_event_validation_would_accept() -> None:
    token = request_id_var.set("req-7")
    try:
        line = AuditEvent.trusted_json(
            "tool.called", "tools", "success", principal="p" * 300, client_id="c", ip="10.0.0.1",
            tool="t" * 80,
            details={"password": "hunter2-hunter2", "n": 3, "ok": True, "none": None,
                     "token": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
                     "arguments": {"city": "Oslo", "api_key": "mcp_" + "k" * 40}},
        )  # fmt: skip
    finally:
        request_id_var.reset(token)
    event = AuditEvent.model_validate_json(line)  # the collector's view
    assert event.model_dump_json() == line  # the model would have written the same line
    assert event.request_id == "req-7"
    assert len(event.principal or "") == 256 and len(event.tool or "") == 64
    assert event.details == {
        "password": REDACTED, "n": 3, "ok": True, "none": None, "token": REDACTED,
        "arguments": {"city": "Oslo", "api_key": REDACTED},
    }  # fmt: skip
    assert event.time.tzinfo is not None and len(event.id) == 32


@pytest.mark.anyio
async def test_lines_emitted_together_keep_their_place_among_single_events(
    redis: Redis, tmp_path: Path
) -> None:
    def line(n: int) -> str:
        return AuditEvent.trusted_json("tool.called", "tools", "success", details={"n": n})

    publisher = AuditPublisher(redis, tmp_path / "spool.jsonl")
    await publisher.start()
    try:
        publisher.emit(_event(1))
        publisher.emit_many([line(2), line(3), line(4)])
        publisher.emit_many([])
        publisher.emit(_event(5))
        publisher.emit_many([line(n) for n in range(6, 106)])  # more than one entry holds
        await _wait_for(redis, 105, publisher)
    finally:
        await publisher.close()
    assert await _numbers(redis) == list(range(1, 106))


@pytest.mark.anyio
async def test_lines_emitted_together_are_spooled_when_redis_is_gone(tmp_path: Path) -> None:
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    spool = tmp_path / "spool.jsonl"
    publisher = AuditPublisher(dead, spool)
    await publisher.start()
    try:
        lines = [
            AuditEvent.trusted_json("tool.called", "tools", "success", details={"n": n})
            for n in (1, 2)
        ]
        publisher.emit_many(lines)
        await publisher.drain()
    finally:
        await publisher.close()
        await dead.aclose()
    spooled = [json.loads(row)["details"]["n"] for row in spool.read_text().splitlines()]
    assert spooled == [1, 2]


def test_a_trusted_event_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown audit event type"):
        AuditEvent.trusted_json("tool.caled", "tools", "success")


@pytest.mark.parametrize(
    "nanos",
    [
        1_796_154_517_000_000_000,  # a whole second: no fraction, as pydantic writes it
        1_796_154_517_000_005_999,  # 5 us (nanoseconds are cut, not rounded)
        1_796_154_517_999_999_999,  # the last microsecond of a second
        1_796_154_518_123_456_000,
        951_782_400_000_000_000,  # 2000-02-29
    ],
)
def test_an_event_time_is_written_as_the_model_would(nanos: int) -> None:
    line = AuditEvent.trusted_json("tool.called", "tools", "success", at_ns=nanos)
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=nanos // 1000)
    assert '"time":' + to_json(expected).decode() in line
    assert AuditEvent.model_validate_json(line).time == expected


def test_an_event_rendered_late_carries_the_time_and_request_id_it_was_given() -> None:
    token = request_id_var.set("req-now")  # not the request the event belongs to
    try:
        line = AuditEvent.trusted_json(
            "tool.called", "tools", "success", request_id="req-then",
            at_ns=1_796_154_517_250_000_000,
        )  # fmt: skip
        unnamed = AuditEvent.trusted_json("tool.called", "tools", "success", request_id=None)
    finally:
        request_id_var.reset(token)
    event = AuditEvent.model_validate_json(line)
    assert event.request_id == "req-then"
    assert event.time == datetime(2026, 12, 1, 19, 48, 37, 250000, tzinfo=UTC)
    assert AuditEvent.model_validate_json(unnamed).request_id is None


def test_a_value_json_cannot_hold_is_named_by_its_type_not_rendered() -> None:
    class Secretive:
        def __repr__(self) -> str:
            return "hunter2"

    line = AuditEvent.trusted_json(
        "tool.called", "tools", "success", details={"odd": Secretive(), "raw": {1, 2}}
    )
    event = AuditEvent.model_validate_json(line)
    assert event.details["odd"] == "<Secretive>" and "hunter2" not in line
