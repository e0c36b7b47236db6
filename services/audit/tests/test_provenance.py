"""Events authenticated by their service: the collector checks each stream entry's HMAC
against the key of the service it names. An entry written with tools' key that claims to
come from auth, or one signed under a key that is not the named service's, is kept in
the chain flagged `verified: false`, left out of the report's counts and rules, and
raises the `unauthenticated_events` alert. Real Redis, a store file."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from bastion_audit.collector import Collector
from bastion_audit.report import Thresholds, build_report
from bastion_audit.signing import CheckpointSigner
from bastion_audit.store import AuditStore
from bastion_common.audit import AUDIT_STREAM, AuditEvent, batch_fields
from bastion_common.eventsign import EntrySigner
from bastion_common.publisher import AuditPublisher
from bastion_common.redis import create_redis

KEYS = {name: secrets.token_bytes(32) for name in ("auth", "tools")}


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_url)
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def collecting(redis: Redis, store: AuditStore) -> AsyncIterator[None]:
    collector = Collector(redis, store, group="audit-collectors", consumer="c1", block_ms=20,
                          event_keys=KEYS)  # fmt: skip
    task = asyncio.create_task(collector.run())
    try:
        yield
    finally:
        collector.stop()
        task.cancel()
        with anyio.fail_after(5), contextlib.suppress(asyncio.CancelledError):
            await task


def failed_login(service: str, principal: str) -> AuditEvent:
    return AuditEvent(type="auth.login", service=service, outcome="failure",
                      principal=principal, ip="10.9.9.9")  # fmt: skip


async def publish(redis: Redis, tmp_path: Path, signer: EntrySigner, *events: AuditEvent) -> None:
    publisher = AuditPublisher(redis, tmp_path / f"{signer.service}.jsonl", signer=signer)
    await publisher.start()
    for e in events:
        await publisher.publish(e.model_dump_json())
    await publisher.close()


async def stored(store: AuditStore, n: int) -> list[dict[str, Any]]:
    with anyio.fail_after(10):
        while (rows := await anyio.to_thread.run_sync(store.query)) and len(rows) < n or not rows:
            await anyio.sleep(0.02)
    return rows


@pytest.mark.anyio
async def test_an_entry_written_with_tools_key_that_claims_to_be_auth_is_flagged_and_alerted(
    redis: Redis, store: AuditStore, tmp_path: Path, signer: CheckpointSigner
) -> None:
    tools = EntrySigner("tools", KEYS["tools"])
    auth = EntrySigner("auth", KEYS["auth"])
    async with collecting(redis, store):
        # The real auth publishes a real failed login; compromised tools forges twelve
        # in auth's name (a false brute-force alarm against the admin, or cover).
        await publish(redis, tmp_path, auth, failed_login("auth", "bob"))
        forged = [failed_login("auth", "admin") for _ in range(12)]
        await publish(redis, tmp_path, tools, *forged)
        rows = await stored(store, 13)
    by_principal = {r["principal"]: r for r in rows}
    assert by_principal["bob"]["entry"] == {"verified": True, "signed_by": "auth", "problem": None}
    flagged = [r for r in rows if r["principal"] == "admin"]
    assert len(flagged) == 12  # kept, never dropped
    assert {r["entry"]["problem"] for r in flagged} == {
        "signed by tools but claims to come from auth"
    }
    assert all(r["entry"]["verified"] is False for r in flagged)
    report = build_report(store, "1h", Thresholds(brute_force_failures=10))
    rules = [a["rule"] for a in report["alerts"]]
    assert "brute_force" not in rules  # the forgeries raise no false alarm of their own
    (alert,) = [a for a in report["alerts"] if a["rule"] == "unauthenticated_events"]
    assert alert["service"] == "auth" and alert["evidence"]["events"] == 12
    assert "signed by tools but claims to come from auth" in alert["summary"]
    assert set(alert["evidence"]["sample_event_ids"]) <= {e.id for e in forged}
    assert report["counts"]["failed_logins"] == 1  # bob's: the forgeries stay out
    chain = store.verify(signer)  # the flag is inside the hashed body: part of the chain
    assert chain.ok and chain.records == 13


@pytest.mark.anyio
async def test_an_entry_naming_auth_but_signed_with_another_key_is_flagged(
    redis: Redis, store: AuditStore
) -> None:
    event = failed_login("auth", "carol")
    fields = EntrySigner("tools", KEYS["tools"]).sign(batch_fields([event.model_dump_json()]))
    fields["svc"] = "auth"  # the entry now names auth, but the HMAC is tools'
    async with collecting(redis, store):
        await redis.xadd(AUDIT_STREAM, fields)  # type: ignore[arg-type]
        (row,) = await stored(store, 1)
    assert row["entry"] == {
        "verified": False, "signed_by": "auth",
        "problem": "signature does not verify under auth's key",
    }  # fmt: skip


@pytest.mark.anyio
async def test_an_unsigned_entry_and_an_unknown_service_are_flagged(
    redis: Redis, store: AuditStore
) -> None:
    unsigned = failed_login("auth", "dave")
    stranger = failed_login("billing", "erin")
    signed = EntrySigner("billing", secrets.token_bytes(32)).sign(
        batch_fields([stranger.model_dump_json()])
    )
    async with collecting(redis, store):
        await redis.xadd(AUDIT_STREAM, unsigned.to_stream_fields())  # type: ignore[arg-type]
        await redis.xadd(AUDIT_STREAM, signed)  # type: ignore[arg-type]
        rows = await stored(store, 2)
    problems = {r["principal"]: r["entry"]["problem"] for r in rows}
    assert problems == {
        "dave": "entry is not signed",
        "erin": "no key is known for service 'billing'",
    }


@pytest.mark.anyio
async def test_changing_a_signed_entry_breaks_its_signature(
    redis: Redis, store: AuditStore
) -> None:
    event = failed_login("auth", "frank")
    fields = EntrySigner("auth", KEYS["auth"]).sign(batch_fields([event.model_dump_json()]))
    fields["event"] = fields["event"].replace("failure", "success")
    async with collecting(redis, store):
        await redis.xadd(AUDIT_STREAM, fields)  # type: ignore[arg-type]
        (row,) = await stored(store, 1)
    assert row["outcome"] == "success" and row["entry"] == {
        "verified": False, "signed_by": "auth",
        "problem": "signature does not verify under auth's key",
    }  # fmt: skip


@pytest.mark.anyio
async def test_clearing_the_flag_in_the_database_is_found_by_verify(
    redis: Redis, store: AuditStore, tmp_path: Path, signer: CheckpointSigner
) -> None:
    async with collecting(redis, store):
        await publish(redis, tmp_path, EntrySigner("tools", KEYS["tools"]),
                      failed_login("auth", "admin"))  # fmt: skip
        (row,) = await stored(store, 1)
    db = sqlite3.connect(tmp_path / "audit.sqlite3", isolation_level=None)
    db.execute("UPDATE events SET verified = 1 WHERE seq = ?", (row["seq"],))
    db.close()
    result = store.verify(signer)
    assert result.first_bad is not None
    assert result.first_bad.reason == "indexed columns differ from the stored event"
