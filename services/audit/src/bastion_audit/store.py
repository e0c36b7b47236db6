"""The audit store: SQLite in WAL mode, one row per event, idempotent by event id.

The hash chain and signed checkpoints build on this table (issue 6). Writes run in a
worker thread (sqlite3 is blocking); a batch is committed before the collector
acknowledges it, so an acknowledged event is on disk.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bastion_common.audit import AuditEvent

__all__ = ["AuditStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    time        TEXT NOT NULL,
    type        TEXT NOT NULL,
    service     TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    principal   TEXT,
    tool        TEXT,
    ip          TEXT,
    body        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_type ON events(type);
"""


class AuditStore:
    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_batch(self, events: Sequence[AuditEvent]) -> int:
        """Store events not stored yet; returns how many were new."""
        rows = [
            (
                e.id,
                e.time.isoformat(),
                e.type,
                e.service,
                e.outcome,
                e.principal,
                e.tool,
                e.ip,
                e.model_dump_json(),
            )
            for e in events
        ]
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO events"
                    " (event_id, time, type, service, outcome, principal, tool, ip, body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.total_changes - before

    def query(self, *, type_: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = "SELECT seq, body FROM events"
        args: list[Any] = []
        if type_:
            sql += " WHERE type = ?"
            args.append(type_)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            {"seq": seq, **AuditEvent.model_validate_json(body).model_dump(mode="json")}
            for seq, body in rows
        ]

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(n)
