"""The hash-chained store: idempotent appends, tamper evidence, checkpoints, retention."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.audit.tests.helpers import event

from bastion_audit.signing import CheckpointSigner
from bastion_audit.store import GENESIS_HASH, AuditStore, EventFilter, chain_hash


def _raw(store_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(store_path, isolation_level=None)


def _fill(store: AuditStore, n: int = 10) -> list[str]:
    events = [event(principal=f"user{i}", n=i) for i in range(n)]
    assert store.add_batch(events) == n
    return [e.id for e in events]


def test_each_row_links_to_the_previous_one_by_hash(store: AuditStore, tmp_path: Path) -> None:
    _fill(store, 5)
    rows = (
        _raw(tmp_path / "audit.sqlite3")
        .execute("SELECT seq, body, prev_hash, hash FROM events ORDER BY seq")
        .fetchall()
    )
    prev = GENESIS_HASH
    for _seq, body, prev_hash, digest in rows:
        assert prev_hash == prev
        assert digest == chain_hash(prev, body)
        prev = digest
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]


def test_storing_the_same_event_twice_keeps_one_row(store: AuditStore) -> None:
    e = event()
    assert store.add_batch([e, e]) == 1
    assert store.add_batch([e]) == 0
    assert store.count() == 1
    assert store.verify(CheckpointSigner.from_secret("x" * 40)).records == 1


def test_an_untouched_chain_verifies(store: AuditStore, signer: CheckpointSigner) -> None:
    _fill(store, 20)
    store.checkpoint()
    result = store.verify(signer)
    assert result.ok and result.first_bad is None
    assert result.records == 20 and result.head_seq == 20 and result.checkpoints == 1


def test_an_edited_row_is_named_by_verify(
    store: AuditStore, signer: CheckpointSigner, tmp_path: Path
) -> None:
    _fill(store, 10)
    db = _raw(tmp_path / "audit.sqlite3")
    body = json.loads(db.execute("SELECT body FROM events WHERE seq = 6").fetchone()[0])
    body["outcome"] = "failure"
    db.execute("UPDATE events SET body = ? WHERE seq = 6", (json.dumps(body),))
    result = store.verify(signer)
    assert not result.ok
    assert result.first_bad is not None
    assert result.first_bad.seq == 6
    assert "content" in result.first_bad.reason


def test_an_edited_index_column_is_found_even_when_the_body_is_intact(
    store: AuditStore, signer: CheckpointSigner, tmp_path: Path
) -> None:
    _fill(store, 10)
    _raw(tmp_path / "audit.sqlite3").execute("UPDATE events SET principal = 'x' WHERE seq = 4")
    result = store.verify(signer)
    assert result.first_bad is not None and result.first_bad.seq == 4


def test_a_deleted_row_is_named_by_verify(
    store: AuditStore, signer: CheckpointSigner, tmp_path: Path
) -> None:
    _fill(store, 10)
    _raw(tmp_path / "audit.sqlite3").execute("DELETE FROM events WHERE seq = 7")
    result = store.verify(signer)
    assert result.first_bad is not None
    assert result.first_bad.seq == 7
    assert "missing" in result.first_bad.reason


def test_two_swapped_rows_are_found_at_the_first_of_them(
    store: AuditStore, signer: CheckpointSigner, tmp_path: Path
) -> None:
    _fill(store, 10)
    db = _raw(tmp_path / "audit.sqlite3")
    # Reorder: rows 3 and 4 trade places, each keeping its own hashes.
    db.execute("BEGIN")
    db.execute("UPDATE events SET seq = -1 WHERE seq = 3")
    db.execute("UPDATE events SET seq = 3 WHERE seq = 4")
    db.execute("UPDATE events SET seq = 4 WHERE seq = -1")
    db.execute("COMMIT")
    result = store.verify(signer)
    assert result.first_bad is not None and result.first_bad.seq == 3


def test_a_row_inserted_at_the_end_without_the_key_is_found(
    store: AuditStore, signer: CheckpointSigner, tmp_path: Path
) -> None:
    _fill(store, 5)
    forged = event(principal="mallory").model_dump(mode="json")
    body = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    _raw(tmp_path / "audit.sqlite3").execute(
        "INSERT INTO events (seq, event_id, ts, type, service, outcome, principal, body,"
        " prev_hash, hash) VALUES (6, ?, 0, 'tool.called', 'test', 'success', 'mallory', ?, ?, ?)",
        (forged["id"], body, "f" * 64, chain_hash("f" * 64, body)),
    )
    result = store.verify(signer)
    assert result.first_bad is not None and result.first_bad.seq == 6


def test_a_rewritten_chain_is_caught_by_the_signed_checkpoint(
    store: AuditStore, signer: CheckpointSigner, tmp_path: Path
) -> None:
    _fill(store, 10)
    assert store.checkpoint() == 10
    db = _raw(tmp_path / "audit.sqlite3")
    # The attacker edits row 4 and recomputes every hash after it: links all hold.
    rows = db.execute("SELECT seq, body FROM events ORDER BY seq").fetchall()
    prev = GENESIS_HASH
    db.execute("BEGIN")
    for seq, body in rows:
        if seq == 4:
            body = body.replace('"success"', '"failure"')
        digest = chain_hash(prev, body)
        db.execute(
            "UPDATE events SET body = ?, prev_hash = ?, hash = ?, outcome = ? WHERE seq = ?",
            (body, prev, digest, json.loads(body)["outcome"], seq),
        )
        prev = digest
    db.execute("COMMIT")
    result = store.verify(signer)
    assert not result.ok
    assert result.first_bad is not None and result.first_bad.seq == 10
    assert "checkpoint" in result.first_bad.reason


def test_a_checkpoint_with_a_forged_signature_is_refused(
    store: AuditStore, signer: CheckpointSigner, tmp_path: Path
) -> None:
    _fill(store, 3)
    store.checkpoint()
    _raw(tmp_path / "audit.sqlite3").execute("UPDATE checkpoints SET signature = ?", ("00" * 64,))
    result = store.verify(signer)
    assert result.first_bad is not None and "signature" in result.first_bad.reason


def test_a_truncated_tail_before_the_last_checkpoint_is_found(
    store: AuditStore, signer: CheckpointSigner, tmp_path: Path
) -> None:
    _fill(store, 10)
    store.checkpoint()
    _raw(tmp_path / "audit.sqlite3").execute("DELETE FROM events WHERE seq > 8")
    result = store.verify(signer)
    assert result.first_bad is not None and result.first_bad.seq == 9


def test_pruning_keeps_the_chain_verifiable_from_a_checkpoint(
    store: AuditStore, signer: CheckpointSigner
) -> None:
    _fill(store, 10)
    assert store.checkpoint() == 10
    _fill(store, 5)
    assert store.prune(datetime.now(UTC) + timedelta(seconds=1)) == 10
    assert store.count() == store.size() == 5
    result = store.verify(signer, retention=timedelta(0))
    assert result.ok, result.first_bad
    assert result.anchor_seq == 10 and result.first_seq == 11 and result.head_seq == 15
    # Appends continue the same chain after pruning.
    _fill(store, 2)
    assert store.verify(signer).ok


def test_pruning_everything_still_continues_the_chain(
    store: AuditStore, signer: CheckpointSigner
) -> None:
    _fill(store, 4)
    store.checkpoint()
    store.prune(datetime.now(UTC) + timedelta(seconds=1))
    assert store.count() == 0
    _fill(store, 3)
    result = store.verify(signer)
    assert result.ok and result.first_seq == 5 and result.head_seq == 7


def test_pruning_before_the_retention_period_is_flagged(
    store: AuditStore, signer: CheckpointSigner
) -> None:
    _fill(store, 4)
    store.checkpoint()
    store.prune(datetime.now(UTC) + timedelta(seconds=1))
    result = store.verify(signer, retention=timedelta(days=90))
    assert result.first_bad is not None and "retention" in result.first_bad.reason


def test_nothing_is_pruned_without_an_old_enough_checkpoint(store: AuditStore) -> None:
    _fill(store, 4)
    assert store.prune(datetime.now(UTC)) == 0
    store.checkpoint()
    assert store.prune(datetime.now(UTC) - timedelta(days=1)) == 0
    assert store.count() == 4


def test_a_checkpoint_is_written_every_n_events(tmp_path: Path, signer: CheckpointSigner) -> None:
    store = AuditStore(tmp_path / "cp.sqlite3", signer=signer, checkpoint_every=10)
    try:
        for _ in range(5):
            _fill(store, 6)
        assert store.verify(signer).checkpoints == 2
    finally:
        store.close()


def test_two_writers_on_one_file_build_one_consistent_chain(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    path = tmp_path / "shared.sqlite3"
    writers = [AuditStore(path, signer=signer), AuditStore(path, signer=signer)]
    shared = [event(principal="both", n=i) for i in range(200)]

    def work(store: AuditStore, offset: int) -> None:
        for start in range(0, 200, 20):
            own = [event(principal=f"w{offset}", n=i) for i in range(20)]
            store.add_batch([*own, *shared[start : start + 20]])

    threads = [threading.Thread(target=work, args=(w, i)) for i, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert writers[0].count() == 200 + 2 * 200
        assert writers[1].verify(signer).ok
    finally:
        for w in writers:
            w.close()


def test_query_filters_and_pages_with_a_cursor(store: AuditStore) -> None:
    now = datetime.now(UTC)
    store.add_batch(
        [event("auth.login", "failure", principal="bob", ip="10.9.9.9", at=now)]
        + [event(tool="read_file", principal="alice", at=now) for _ in range(5)]
        + [event(principal="old", at=now - timedelta(days=2))]
    )
    assert [r["principal"] for r in store.query(where=EventFilter(ip="10.9.9.9"))] == ["bob"]
    assert len(store.query(where=EventFilter(tool="read_file", principal="alice"))) == 5
    assert len(store.query(where=EventFilter(outcome="failure", type="auth.login"))) == 1
    recent = store.query(where=EventFilter(since=now - timedelta(hours=1)))
    assert "old" not in {r["principal"] for r in recent} and len(recent) == 6
    first = store.query(limit=4)
    second = store.query(limit=4, after_seq=first[-1]["seq"])
    assert [r["seq"] for r in first + second] == [1, 2, 3, 4, 5, 6, 7]
