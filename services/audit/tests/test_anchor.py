"""The chain's head anchored outside the database: cutting the newest events (with or
without the checkpoints above them) is found and the gap named; so is a stale newest
checkpoint, a forged anchor, and a missing one. Redis is real; the store is a file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx2
import pytest
from fastapi import FastAPI
from services.audit.tests.helpers import Issuer, event

from bastion_audit import anchor
from bastion_audit.anchor import AnchorBook
from bastion_audit.app import create_app
from bastion_audit.redis_keys import ANCHOR_KEY
from bastion_audit.signing import CheckpointSigner
from bastion_audit.store import AuditStore, VerifyResult
from bastion_common.redis import Redis, create_redis

MAX_AGE = timedelta(seconds=120)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def book(redis: Redis, signer: CheckpointSigner, tmp_path: Path) -> AnchorBook:
    return AnchorBook(redis, signer, tmp_path / "witness" / "anchor.json")


async def _fill_and_anchor(store: AuditStore, book: AnchorBook, total: int, every: int) -> None:
    """`total` events, a checkpoint every `every`, each anchored as the collector does."""
    for start in range(0, total, every):
        store.add_batch([event(n=i) for i in range(start, min(total, start + every))])
        store.checkpoint()
        newest = store.newest_checkpoint()
        assert newest is not None
        await book.write(newest)


def _cut(store_path: Path, after: int, *, checkpoints: bool) -> None:
    db = sqlite3.connect(store_path, isolation_level=None)
    db.execute("DELETE FROM events WHERE seq > ?", (after,))
    if checkpoints:
        db.execute("DELETE FROM checkpoints WHERE seq > ?", (after,))
    db.close()


async def _verify(
    store: AuditStore, signer: CheckpointSigner, book: AnchorBook, now: datetime | None = None
) -> VerifyResult:
    found, unreadable, newest = await anchor.read_consistent(book, store)
    return anchor.check(store.verify(signer), store, signer, found, unreadable, newest,
                        max_age=MAX_AGE, now=now)  # fmt: skip


@pytest.mark.anyio
async def test_an_intact_anchored_chain_verifies(
    store: AuditStore, signer: CheckpointSigner, book: AnchorBook
) -> None:
    await _fill_and_anchor(store, book, 25, 10)
    result = await _verify(store, signer, book)
    assert result.ok, result.problems
    assert result.head_seq == 25


@pytest.mark.anyio
async def test_cutting_the_newest_events_and_their_checkpoints_is_found_and_the_gap_named(
    store: AuditStore, signer: CheckpointSigner, book: AnchorBook, tmp_path: Path
) -> None:
    await _fill_and_anchor(store, book, 25, 10)
    _cut(tmp_path / "audit.sqlite3", 10, checkpoints=True)
    inside = store.verify(signer)
    assert inside.ok and inside.records == 10  # the database alone cannot see the cut
    result = await _verify(store, signer, book)
    assert not result.ok
    assert result.first_bad is not None and result.first_bad.seq == 11
    assert result.first_bad.reason.startswith("records 11..25 are missing: the anchor of")


@pytest.mark.anyio
async def test_cutting_the_newest_events_but_not_their_checkpoints_is_found_too(
    store: AuditStore, signer: CheckpointSigner, book: AnchorBook, tmp_path: Path
) -> None:
    await _fill_and_anchor(store, book, 25, 10)
    _cut(tmp_path / "audit.sqlite3", 18, checkpoints=False)
    result = await _verify(store, signer, book)
    assert not result.ok
    reasons = [p.reason for p in result.problems]
    assert "records up to checkpoint 25 are missing" in reasons
    assert any(r.startswith("records 19..25 are missing: the anchor") for r in reasons)


@pytest.mark.anyio
async def test_the_witness_file_still_finds_the_cut_when_the_redis_anchor_is_gone(
    store: AuditStore, signer: CheckpointSigner, book: AnchorBook, redis: Redis, tmp_path: Path
) -> None:
    await _fill_and_anchor(store, book, 25, 10)
    _cut(tmp_path / "audit.sqlite3", 10, checkpoints=True)
    await redis.delete(ANCHOR_KEY)
    result = await _verify(store, signer, book)
    assert result.first_bad is not None
    assert result.first_bad.reason.startswith("records 11..25 are missing")


@pytest.mark.anyio
async def test_a_forged_anchor_is_refused_and_the_real_one_still_counts(
    store: AuditStore, signer: CheckpointSigner, book: AnchorBook, redis: Redis, tmp_path: Path
) -> None:
    await _fill_and_anchor(store, book, 25, 10)
    _cut(tmp_path / "audit.sqlite3", 10, checkpoints=True)
    # The attacker rewrites the Redis anchor to name the cut head (without the key).
    forged = {"seq": 10, "hash": store.hash_at(10), "time": datetime.now(UTC).isoformat(),
              "key_id": signer.key_id, "signature": "00" * 64}  # fmt: skip
    await redis.set(ANCHOR_KEY, json.dumps(forged))
    reasons = [p.reason for p in (await _verify(store, signer, book)).problems]
    assert "an anchor's signature is invalid (forged or altered)" in reasons
    assert any(r.startswith("records 11..25 are missing") for r in reasons)  # the witness


@pytest.mark.anyio
async def test_checkpoints_without_any_anchor_fail_closed(
    store: AuditStore, signer: CheckpointSigner, redis: Redis
) -> None:
    store.add_batch([event(n=i) for i in range(3)])
    store.checkpoint()
    result = await _verify(store, signer, AnchorBook(redis, signer))
    assert result.first_bad is not None
    assert result.first_bad.reason == "no anchor outside the database, yet checkpoints exist"


@pytest.mark.anyio
async def test_a_newest_checkpoint_older_than_its_interval_plus_margin_is_flagged(
    store: AuditStore, signer: CheckpointSigner, book: AnchorBook
) -> None:
    await _fill_and_anchor(store, book, 5, 5)
    later = datetime.now(UTC) + MAX_AGE + timedelta(seconds=1)
    reasons = [p.reason for p in (await _verify(store, signer, book, now=later)).problems]
    assert any(r.startswith("the newest checkpoint (record 5,") for r in reasons)
    assert any(r.startswith("the newest anchor (record 5,") for r in reasons)
    # The collector signs an idle head again at every interval: then it is fresh.
    assert store.checkpoint() is None  # nothing new to sign...
    assert store.checkpoint(refresh=True) == 5  # ...but the same head, signed again
    newest = store.newest_checkpoint()
    assert newest is not None
    assert await book.write(newest)
    assert (await _verify(store, signer, book)).ok


@pytest.mark.anyio
async def test_the_running_service_anchors_its_head_and_verify_names_a_cut(
    make_settings: object, issuer: Issuer, tmp_path: Path, redis: Redis
) -> None:
    witness = tmp_path / "witness" / "anchor.json"
    settings = make_settings(witness_path=str(witness), checkpoint_interval_s=0.2)  # type: ignore[operator]
    async with issuer.client() as jwks_client:
        app: FastAPI = create_app(settings, http_client=jwks_client)
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=app), base_url="http://audit.test"
            ) as client,
        ):
            for i in range(12):
                await app.state.bastion.audit.publisher.publish(event(n=i).model_dump_json())
            store: AuditStore = app.state.bastion.extra["store"]
            with anyio.fail_after(10):
                while True:
                    anchored = json.loads(await redis.get(ANCHOR_KEY) or "{}")
                    if anchored.get("seq", 0) >= store.head()[0] >= 12:
                        break
                    await anyio.sleep(0.05)
            assert json.loads(witness.read_text())["seq"] == anchored["seq"]
            headers = {"Authorization": f"Bearer {issuer.token()}"}
            assert (await client.get("/v1/verify", headers=headers)).json()["ok"] is True
            _cut(Path(settings.db_path), 5, checkpoints=True)
            await anyio.sleep(0.5)  # checkpoint turns pass: none may anchor the cut head
            answer = (await client.get("/v1/verify", headers=headers)).json()
            assert json.loads(await redis.get(ANCHOR_KEY) or "{}")["seq"] == anchored["seq"]
    assert answer["ok"] is False
    assert answer["first_bad"]["seq"] == 6
    assert answer["first_bad"]["reason"].startswith(f"records 6..{anchored['seq']} are missing")


@pytest.mark.anyio
async def test_the_collector_never_anchors_a_head_behind_the_anchor(
    store: AuditStore, signer: CheckpointSigner, book: AnchorBook, tmp_path: Path
) -> None:
    await _fill_and_anchor(store, book, 25, 10)
    _cut(tmp_path / "audit.sqlite3", 10, checkpoints=True)
    assert store.checkpoint(refresh=True) == 10
    cut_head = store.newest_checkpoint()
    assert cut_head is not None
    assert await book.write(cut_head) is False  # the evidence of the cut stays
    found, _ = await book.read()
    assert {a.seq for a in found} == {25}
