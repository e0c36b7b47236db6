"""The collector: exactly once across restarts, claims from dead consumers, dead letters,
replicas, re-redaction, and a Redis outage under load."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from services.audit.tests.helpers import PersistentRedis, event

from bastion_audit.collector import DEAD_LETTER_STREAM, Collector
from bastion_audit.signing import CheckpointSigner
from bastion_audit.store import AuditStore
from bastion_common.audit import AUDIT_STREAM, AuditEvent, batch_fields
from bastion_common.logging import REDACTED
from bastion_common.publisher import AuditPublisher
from bastion_common.redis import create_redis

GROUP = "audit-collectors"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_url)
    yield client
    await client.aclose()


def collector(redis: Redis, store: AuditStore, name: str = "c1", **kw: Any) -> Collector:
    options: dict[str, Any] = {"block_ms": 20, "claim_idle_ms": 200, "claim_interval_s": 0.05}
    options.update(kw)
    return Collector(redis, store, group=GROUP, consumer=name, **options)


@asynccontextmanager
async def running(*collectors: Collector) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c.run()) for c in collectors]
    try:
        yield
    finally:
        for c, task in zip(collectors, tasks, strict=True):
            c.stop()
            task.cancel()
        for task in tasks:
            with anyio.fail_after(5), contextlib.suppress(asyncio.CancelledError):
                await task
        for c in collectors:
            await c.settle()


async def xadd_all(redis: Redis, events: Sequence[AuditEvent]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for e in events:
            pipe.xadd(AUDIT_STREAM, e.to_stream_fields())  # type: ignore[arg-type]
        await pipe.execute()


async def wait_stored(store: AuditStore, n: int, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while await anyio.to_thread.run_sync(store.count) < n:
            await anyio.sleep(0.02)


async def pending(redis: Redis) -> int:
    summary: Any = await redis.xpending(AUDIT_STREAM, GROUP)
    return int(summary["pending"])


def numbers(store: AuditStore) -> list[int]:
    return [row["details"]["n"] for row in store.query(limit=1_000_000)]


@pytest.mark.anyio
async def test_events_arrive_exactly_once_across_a_restart_after_a_crash_before_ack(
    redis: Redis, store: AuditStore, signer: CheckpointSigner
) -> None:
    events = [event(n=i) for i in range(300)]
    await xadd_all(redis, events)
    first = collector(redis, store, batch_size=100)
    await first.ensure_group()
    # Crash between storing and acknowledging: read and store a batch, never ack.
    reply: Any = await redis.xreadgroup(GROUP, "c1", {AUDIT_STREAM: ">"}, count=100)
    stored_before_crash = [e for _, f in reply[0][1] for e in AuditEvent.all_from_stream_fields(f)]
    assert store.add_batch(stored_before_crash) == 100
    assert await pending(redis) == 100
    # Restart under the same name: the pending batch is read again and not stored twice.
    async with running(collector(redis, store, batch_size=100)):
        await wait_stored(store, 300)
        with anyio.fail_after(5):
            while await pending(redis):
                await anyio.sleep(0.02)
    assert store.count() == 300
    assert numbers(store) == list(range(300))
    assert store.verify(signer).ok


@pytest.mark.anyio
async def test_a_collector_stopped_mid_stream_and_started_again_loses_and_doubles_nothing(
    redis: Redis, store: AuditStore
) -> None:
    await xadd_all(redis, [event(n=i) for i in range(2000)])
    async with running(collector(redis, store, batch_size=50)):
        await wait_stored(store, 1)
    assert store.count() < 2000
    await xadd_all(redis, [event(n=i) for i in range(2000, 2500)])
    async with running(collector(redis, store, batch_size=50)):
        await wait_stored(store, 2500)
    assert sorted(numbers(store)) == list(range(2500))


@pytest.mark.anyio
async def test_entries_held_by_a_dead_consumer_are_claimed_back(
    redis: Redis, store: AuditStore
) -> None:
    await xadd_all(redis, [event(n=i) for i in range(120)])
    alive = collector(redis, store, "alive", claim_idle_ms=150)
    await alive.ensure_group()
    # "dead" reads everything and dies without acknowledging.
    await redis.xreadgroup(GROUP, "dead", {AUDIT_STREAM: ">"}, count=1000)
    assert await pending(redis) == 120
    async with running(alive):
        await wait_stored(store, 120)
        with anyio.fail_after(5):
            while await pending(redis):
                await anyio.sleep(0.02)
    assert sorted(numbers(store)) == list(range(120))


@pytest.mark.anyio
async def test_a_poison_message_lands_in_the_dead_letter_stream_with_its_reason(
    redis: Redis, store: AuditStore
) -> None:
    await xadd_all(redis, [event(n=0)])
    await redis.xadd(AUDIT_STREAM, {"v": "1", "event": "{not json"})
    await redis.xadd(AUDIT_STREAM, {"v": "1", "something": "else"})
    bad_type = event(n=1).model_dump(mode="json") | {"type": "NOT A TYPE"}
    await redis.xadd(AUDIT_STREAM, {"v": "1", "event": json.dumps(bad_type)})
    await xadd_all(redis, [event(n=2)])
    async with running(collector(redis, store)):
        await wait_stored(store, 2)
        with anyio.fail_after(5):
            while await redis.xlen(DEAD_LETTER_STREAM) < 3 or await pending(redis):
                await anyio.sleep(0.02)
    dead = await redis.xrange(DEAD_LETTER_STREAM)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert reasons[0].startswith("invalid event")
    assert reasons[1] == "no 'event' field"
    assert reasons[2].startswith("invalid event: type")
    assert all(fields[b"entry_id"] for _, fields in dead)
    assert numbers(store) == [0, 2]
    stats = await collector(redis, store).stats()
    assert stats.dead_letters == 3 and stats.pending == 0


@pytest.mark.anyio
async def test_a_flood_of_junk_cannot_grow_the_dead_letter_stream_without_bound(
    redis: Redis, store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any publisher may XADD (it is how every service audits): junk is dead-lettered, and
    # only the newest DEAD_LETTER_MAX entries are kept (each one is logged as well).
    monkeypatch.setattr("bastion_audit.collector.DEAD_LETTER_MAX", 200)
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(1000):
            pipe.xadd(AUDIT_STREAM, {"v": "1", "junk": str(i)})
        ids = await pipe.execute()
    first = collector(redis, store, batch_size=100)
    await first.ensure_group()
    async with running(first):
        with anyio.fail_after(10):
            while await pending(redis) or await redis.xlen(AUDIT_STREAM) > 1000:
                await anyio.sleep(0.02)
            while (await redis.xrevrange(DEAD_LETTER_STREAM, count=1) or [(b"", {})])[0][1].get(
                b"entry_id"
            ) != ids[-1]:
                await anyio.sleep(0.02)
    # Trimming is approximate (whole stream nodes of 100 entries): within one node.
    assert 200 <= await redis.xlen(DEAD_LETTER_STREAM) <= 300
    assert store.count() == 0


@pytest.mark.anyio
async def test_two_replicas_at_once_store_every_event_once_in_one_chain(
    redis_url: str, tmp_path: Path, signer: CheckpointSigner
) -> None:
    path = tmp_path / "shared.sqlite3"
    stores = [AuditStore(path, signer=signer), AuditStore(path, signer=signer)]
    clients = [create_redis(redis_url), create_redis(redis_url)]
    try:
        replicas = [
            collector(clients[i], stores[i], f"replica-{i}", batch_size=64) for i in range(2)
        ]
        async with running(*replicas):
            for start in range(0, 3000, 300):
                await xadd_all(clients[0], [event(n=i) for i in range(start, start + 300)])
                await anyio.sleep(0.01)
            await wait_stored(stores[0], 3000, timeout=20)
        assert sorted(numbers(stores[0])) == list(range(3000))
        consumers: Any = await clients[0].xinfo_consumers(AUDIT_STREAM, GROUP)
        assert all(int(c["pending"]) == 0 for c in consumers)
        assert len(consumers) == 2
        assert stores[1].verify(signer).ok
    finally:
        for s in stores:
            s.close()
        for c in clients:
            await c.aclose()


@pytest.mark.anyio
async def test_the_collector_redacts_secrets_a_publisher_let_through(
    redis: Redis, store: AuditStore
) -> None:
    raw = event(n=0).model_dump(mode="json")
    raw["principal"] = "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"
    raw["details"] = {"password": "hunter2", "arguments": {"content": "top secret file"},
                      "note": "key mcp_live_ABCDEFGHIJKLMNOPQRST"}  # fmt: skip
    # Written straight to the stream, as a buggy or hostile publisher would.
    await redis.xadd(AUDIT_STREAM, {"v": "1", "event": json.dumps(raw)})
    async with running(collector(redis, store)):
        await wait_stored(store, 1)
    (row,) = store.query()
    text = json.dumps(row)
    for secret in ("hunter2", "top secret", "eyJhbGciOiJFUzI1NiJ9", "mcp_live_"):
        assert secret not in text
    assert row["details"]["password"] == REDACTED
    assert row["details"]["arguments"]["content"] == REDACTED


@pytest.mark.anyio
async def test_redis_stopped_and_started_under_load_loses_nothing_and_keeps_order(
    persistent_redis: PersistentRedis, store: AuditStore, tmp_path: Path, signer: CheckpointSigner
) -> None:
    publisher_redis = create_redis(persistent_redis.url)
    collector_redis = create_redis(persistent_redis.url)
    publisher = AuditPublisher(publisher_redis, tmp_path / "spool.jsonl", retry_interval=0.05)
    await publisher.start()
    total = 3000
    try:
        async with running(collector(collector_redis, store, batch_size=200)):
            for i in range(total):
                publisher.emit(event(n=i).model_dump_json())
                if i == 1000:
                    await publisher.drain()
                    await anyio.to_thread.run_sync(persistent_redis.stop)
                if i == 2000:
                    assert publisher.spooled
                    await anyio.to_thread.run_sync(persistent_redis.start)
                if i % 100 == 0:
                    await anyio.sleep(0.005)  # a steady stream, not one burst
            await publisher.drain()
            await wait_stored(store, total, timeout=30)
    finally:
        await publisher.close()
        await publisher_redis.aclose()
        await collector_redis.aclose()
    assert numbers(store) == list(range(total))
    assert store.verify(signer).ok


@pytest.mark.anyio
async def test_trimming_drops_only_entries_every_group_has_acknowledged(
    redis: Redis, store: AuditStore
) -> None:
    await xadd_all(redis, [event(n=i) for i in range(3000)])
    async with running(collector(redis, store, batch_size=500)):
        await wait_stored(store, 3000)
    # A second group (another consumer of the stream) that has read nothing yet.
    await xadd_all(redis, [event(n=i) for i in range(3000, 3010)])
    await redis.xgroup_create(AUDIT_STREAM, "slow-reader", id="$")
    await xadd_all(redis, [event(n=i) for i in range(3010, 3020)])
    await collector(redis, store).trim()
    remaining = [e.details["n"] for _, f in await redis.xrange(AUDIT_STREAM)
                 for e in AuditEvent.all_from_stream_fields(f)]  # fmt: skip
    assert len(remaining) < 3020
    # Everything the audit group has not stored, and everything the slow group has not
    # read, is still there.
    assert set(range(3000, 3020)) <= set(remaining)


@pytest.mark.anyio
async def test_a_store_that_cannot_write_holds_the_events_until_it_can(
    redis: Redis, tmp_path: Path, signer: CheckpointSigner
) -> None:
    import sqlite3

    path = tmp_path / "locked.sqlite3"
    store = AuditStore(path, signer=signer, busy_timeout_ms=50)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        async with running(collector(redis, store)):
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            await xadd_all(redis, [event(n=i) for i in range(200)])
            with anyio.fail_after(5):
                while await pending(redis) == 0:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.3)  # several failed attempts
            assert store.count() == 0 and await pending(redis) > 0
            blocker.execute("COMMIT")
            await wait_stored(store, 200)
            with anyio.fail_after(5):
                while await pending(redis):
                    await anyio.sleep(0.02)
        assert numbers(store) == list(range(200))
    finally:
        blocker.close()
        store.close()


@pytest.mark.anyio
async def test_a_full_disk_stops_acknowledging_says_why_and_catches_up_when_space_returns(
    redis: Redis, tmp_path: Path, signer: CheckpointSigner, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's max_page_count stands in for the disk: writes past it fail with
    SQLITE_FULL, exactly as on a full volume (the fault suite fills a real one)."""
    store = AuditStore(tmp_path / "full.sqlite3", signer=signer)
    try:
        store.add_batch([event(n=-1)])
        (pages,) = store._db.execute("PRAGMA page_count").fetchone()
        store._db.execute(f"PRAGMA max_page_count={pages}")
        worker = collector(redis, store, batch_size=50)
        async with running(worker):
            await xadd_all(redis, [event(n=i, padding="x" * 2000) for i in range(300)])
            with anyio.fail_after(5):
                while worker.stalled is None:
                    await anyio.sleep(0.02)
            assert worker.stalled is not None and "disk is full" in worker.stalled
            await anyio.sleep(1.0)  # retries, each refused
            assert store.count() == 1  # nothing half-written
            # One batch in hand and one read ahead at most, none acknowledged; the rest
            # waits in the stream, unread.
            held = await pending(redis)
            summary: Any = await redis.xinfo_groups(AUDIT_STREAM)
            assert held in (50, 100) and held + summary[0]["lag"] == 300
            store._db.execute("PRAGMA max_page_count=1073741823")  # space returns
            await wait_stored(store, 301)
            with anyio.fail_after(5):
                while await pending(redis):
                    await anyio.sleep(0.02)
            assert worker.stalled is None
        assert sorted(numbers(store)) == list(range(-1, 300))
        assert store.verify(signer).ok
    finally:
        store.close()


@pytest.mark.anyio
async def test_a_batch_entry_is_stored_event_by_event_and_a_bad_one_is_dead_lettered(
    redis: Redis, store: AuditStore
) -> None:
    good = [event(n=i).model_dump_json() for i in range(3)]
    bad = json.dumps(event(n=99).model_dump(mode="json") | {"outcome": "maybe"})
    await redis.xadd(AUDIT_STREAM, batch_fields(good))  # type: ignore[arg-type]
    await redis.xadd(AUDIT_STREAM, batch_fields([good[0], bad, event(n=3).model_dump_json()]))  # type: ignore[arg-type]
    await redis.xadd(AUDIT_STREAM, {"v": "1", "events": '{"not": "a list"}'})
    async with running(collector(redis, store)):
        await wait_stored(store, 4)
        with anyio.fail_after(5):
            while await redis.xlen(DEAD_LETTER_STREAM) < 2 or await pending(redis):
                await anyio.sleep(0.02)
    # Stored once each (the repeated good[0] is the same event id), the bad one kept aside.
    assert sorted(numbers(store)) == [0, 1, 2, 3]
    reasons = [fields[b"reason"].decode() for _, fields in await redis.xrange(DEAD_LETTER_STREAM)]
    assert reasons[0].startswith("event 1 of the batch: invalid event: outcome")
    assert reasons[1] == "invalid event"


@pytest.mark.anyio
async def test_events_flushed_together_share_one_stream_entry_in_order(
    redis: Redis, tmp_path: Path
) -> None:
    publisher = AuditPublisher(redis, tmp_path / "spool.jsonl", entry_size=4)
    await publisher.start()
    try:
        for n in range(10):
            publisher.emit(event(n=n).model_dump_json())
        await publisher.drain()
    finally:
        await publisher.close()
    entries = await redis.xrange(AUDIT_STREAM)
    per_entry = [len(AuditEvent.all_from_stream_fields(f)) for _, f in entries]
    assert per_entry == [4, 4, 2]  # one batch of 10, cut into entries of at most 4
    flat = [e.details["n"] for _, f in entries for e in AuditEvent.all_from_stream_fields(f)]
    assert flat == list(range(10))
