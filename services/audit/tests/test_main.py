"""`python -m bastion_audit` as a real process: kill -9 mid-batch, then verify and events."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis
from services.audit.tests.helpers import CHECKPOINT_KEY, event

from bastion_common.audit import AUDIT_STREAM
from tests.redis_process import free_port


def _env(redis_url: str, db: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "PORT": str(free_port()),
        "AUDIT_CHECKPOINT_KEY": CHECKPOINT_KEY,
        "AUDIT_DB_PATH": str(db),
        "AUDIT_CONSUMER_NAME": "proc-collector",
        "AUDIT_BATCH_SIZE": "500",
        "BASTION_SPOOL_DIR": str(tmp_path / "spool"),
        "LOG_LEVEL": "WARNING",
    }


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            (n,) = conn.execute("SELECT COUNT(*) FROM events WHERE type = 'tool.called'").fetchone()
        return int(n)
    except sqlite3.OperationalError:
        return 0  # the schema is not created yet


def _wait(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def spawn(redis_url: str, tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(db: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bastion_audit"],
            env=_env(redis_url, db, tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)


def _cli(redis_url: str, db: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion_audit", *args],
        env=_env(redis_url, db, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_events_arrive_exactly_once_across_a_kill_9_in_the_middle_of_a_batch(
    redis_url: str, tmp_path: Path, spawn: object
) -> None:
    total = 20_000
    client = sync_redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for i in range(total):
        pipe.xadd(AUDIT_STREAM, event(n=i).to_stream_fields())  # type: ignore[arg-type]
    pipe.execute()
    db = tmp_path / "audit.sqlite3"
    first = spawn(db)  # type: ignore[operator]
    _wait(lambda: _count(db) >= 1000, 60)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = _count(db)
    assert 0 < killed_at < total, "the kill must land while events are still flowing"
    second = spawn(db)  # type: ignore[operator]
    _wait(lambda: _count(db) >= total, 120)
    _wait(lambda: client.xpending(AUDIT_STREAM, "audit-collectors")["pending"] == 0, 30)
    second.terminate()
    second.wait(timeout=15)
    client.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT json_extract(body, '$.details.n') FROM events WHERE type = 'tool.called'"
        ).fetchall()
    assert sorted(n for (n,) in rows) == list(range(total))
    verified = _cli(redis_url, db, tmp_path, "verify")
    assert verified.returncode == 0, verified.stdout
    assert json.loads(verified.stdout)["ok"] is True


def test_verify_exits_1_and_names_the_first_bad_record(redis_url: str, tmp_path: Path) -> None:
    from bastion_audit.signing import CheckpointSigner
    from bastion_audit.store import AuditStore

    db = tmp_path / "audit.sqlite3"
    store = AuditStore(db, signer=CheckpointSigner.from_secret(CHECKPOINT_KEY))
    store.add_batch([event(n=i) for i in range(10)])
    store.close()
    ok = _cli(redis_url, db, tmp_path, "verify")
    assert ok.returncode == 0 and json.loads(ok.stdout)["records"] == 10
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET body = replace(body, 'alice', 'bob') WHERE seq = 4")
    bad = _cli(redis_url, db, tmp_path, "verify")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["first_bad"]["seq"] == 4
    listed = _cli(redis_url, db, tmp_path, "events", "--type", "tool.called", "--limit", "3")
    assert [json.loads(line)["service"] for line in listed.stdout.splitlines()] == ["test"] * 3
