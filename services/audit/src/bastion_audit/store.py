"""The audit store: SQLite in WAL mode, one hash-chained row per event, signed checkpoints.

Every row carries `prev_hash` and `hash = SHA-256(prev_hash "\\n" body)`, where `body`
is the event's canonical JSON (sorted keys, no spaces). Changing, removing, inserting or
reordering a row breaks the link at that row; rewriting the whole chain after it is caught
by the signed checkpoints (`signing.py`), which the attacker cannot forge. The chain and
its verification are `chain.py`.

Appends are serialised in SQLite itself (`BEGIN IMMEDIATE`, read the head, append), so
several collector replicas writing the same file still build one chain. Storing is
idempotent by event id. Writes are batched and committed (synchronous=FULL) before the
collector acknowledges anything. All methods are blocking: call them from a thread.

Retention: `prune` deletes only whole runs of events up to a checkpoint older than the
cut-off, and remembers that checkpoint as the anchor the chain is verified from.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bastion_audit.chain import (
    GENESIS_HASH,
    BadRecord,
    VerifyResult,
    canonical_json,
    chain_hash,
    epoch_ms,
    meta,
    row_columns,
    verify_chain,
)
from bastion_audit.signing import CheckpointSigner
from bastion_common.audit import AuditEvent
from bastion_common.eventsign import Provenance

__all__ = [
    "GENESIS_HASH",
    "AuditStore",
    "BadRecord",
    "disk_full",
    "Checkpoint",
    "EventFilter",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    ts          INTEGER NOT NULL,
    type        TEXT NOT NULL,
    service     TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    principal   TEXT,
    client_id   TEXT,
    tool        TEXT,
    ip          TEXT,
    token_ref   TEXT,
    verified    INTEGER,
    body        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE INDEX IF NOT EXISTS events_type_ts ON events(type, ts);
CREATE INDEX IF NOT EXISTS events_principal_ts ON events(principal, ts);
CREATE INDEX IF NOT EXISTS events_ip_ts ON events(ip, ts);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq         INTEGER PRIMARY KEY,
    hash        TEXT NOT NULL,
    time        TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    signature   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class EventFilter:
    since: datetime | None = None
    until: datetime | None = None
    type: str | None = None
    principal: str | None = None
    outcome: str | None = None
    tool: str | None = None
    ip: str | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A signed head of the chain: at `time`, record `seq` had hash `hash`."""

    seq: int
    hash: str
    time: str
    key_id: str
    signature: str


def disk_full(exc: BaseException) -> bool:
    """The store could not write for want of space (SQLite's SQLITE_FULL, or ENOSPC)."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


class AuditStore:
    def __init__(
        self,
        path: str | Path,
        *,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 10_000,
        busy_timeout_ms: int = 30_000,
    ) -> None:
        self._path = str(path)
        self._signer = signer
        self._checkpoint_every = checkpoint_every
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._db = self._connect(busy_timeout_ms)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._reader = self._connect(busy_timeout_ms)
        self._checkpointed = False  # add_batch wrote a checkpoint not yet anchored

    def _migrate(self) -> None:
        """A store made before entries were signed gets the `verified` column (NULL for
        its rows: nobody checked them) and the view of the events the report trusts."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if "verified" not in columns:
            self._db.execute("ALTER TABLE events ADD COLUMN verified INTEGER")
        # The report's detectors read this view: an event whose entry failed
        # verification is kept in the chain but raises its own alert instead.
        self._db.execute(
            "CREATE VIEW IF NOT EXISTS trusted_events AS"
            " SELECT * FROM events WHERE verified IS NOT 0"
        )

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes SQLite's write lock before reading the head, so two
        # writers (threads or replicas) can never both append after the same row.
        # A COMMIT that fails (a full disk) may leave the transaction open: it is rolled
        # back too, or every later BEGIN would fail and the store never recover.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A read connection showing one snapshot of the store for the block's duration."""
        with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                yield self._reader
            finally:
                self._reader.execute("COMMIT")

    @contextmanager
    def _long_reader(self) -> Iterator[sqlite3.Connection]:
        # A walk of the whole chain gets its own connection, so queries and reports are
        # not queued behind it.
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("BEGIN")
            yield db
            db.execute("COMMIT")
        finally:
            db.close()

    # -- writing ---------------------------------------------------------------------

    def add_batch(
        self, events: Sequence[AuditEvent], provenance: Mapping[str, Provenance] | None = None
    ) -> int:
        """Append the events not stored yet, in order; returns how many were new.

        `provenance` (by event id, from the collector): whether the stream entry that
        carried the event was signed by the service it claims; it goes into the body as
        `entry`, so the chain's hash covers it."""
        if not events:
            return 0
        prepared: dict[str, tuple[str, tuple[Any, ...]]] = {}
        for event in events:
            if event.id not in prepared:
                data = event.model_dump(mode="json")
                if provenance is not None and event.id in provenance:
                    data["entry"] = asdict(provenance[event.id])
                prepared[event.id] = (canonical_json(data), row_columns(data))
        with self._lock, self._transaction() as db:
            ids = list(prepared)
            for start in range(0, len(ids), 900):
                chunk = ids[start : start + 900]
                marks = ",".join("?" * len(chunk))
                for (known,) in db.execute(
                    f"SELECT event_id FROM events WHERE event_id IN ({marks})",  # noqa: S608 - only placeholders
                    chunk,
                ):
                    prepared.pop(known, None)
            if not prepared:
                return 0
            seq, prev = self._head(db)
            rows = []
            for body, columns in prepared.values():
                seq += 1
                digest = chain_hash(prev, body)
                rows.append((seq, *columns, body, prev, digest))
                prev = digest
            db.executemany(
                "INSERT INTO events (seq, event_id, ts, type, service, outcome, principal,"
                " client_id, tool, ip, token_ref, verified, body, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            if self._signer is not None:
                (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM checkpoints").fetchone()
                if seq - int(last) >= self._checkpoint_every:
                    self._write_checkpoint(db, seq, prev)
                    self._checkpointed = True
            return len(rows)

    def _head(self, db: sqlite3.Connection) -> tuple[int, str]:
        row = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            return int(row[0]), str(row[1])
        anchor = meta(db, "anchor_seq")
        if anchor is not None:
            return int(anchor), str(meta(db, "anchor_hash"))
        return 0, GENESIS_HASH

    def _write_checkpoint(self, db: sqlite3.Connection, seq: int, head_hash: str) -> None:
        assert self._signer is not None  # noqa: S101 - callers check
        now = datetime.now(UTC).isoformat()
        db.execute(
            "INSERT OR IGNORE INTO checkpoints (seq, hash, time, key_id, signature)"
            " VALUES (?, ?, ?, ?, ?)",
            (seq, head_hash, now, self._signer.key_id, self._signer.sign(seq, head_hash, now)),
        )

    def checkpoint(self, *, refresh: bool = False) -> int | None:
        """Sign the current head if it moved since the last checkpoint; its seq, or None.

        `refresh`: when it did not move, sign it again with the time of now, so an idle
        chain still has a fresh newest checkpoint (verify flags a stale one: events
        after it may have been cut)."""
        if self._signer is None:
            return None
        with self._lock, self._transaction() as db:
            seq, head_hash = self._head(db)
            (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM checkpoints").fetchone()
            if seq == 0 or (seq < int(last)) or (seq == int(last) and not refresh):
                return None
            if seq == int(last):
                db.execute("DELETE FROM checkpoints WHERE seq = ?", (seq,))
            self._write_checkpoint(db, seq, head_hash)
            return seq

    def take_checkpointed(self) -> bool:
        """Whether add_batch wrote a checkpoint since the last call (to anchor it)."""
        with self._lock:
            written, self._checkpointed = self._checkpointed, False
        return written

    def newest_checkpoint(self) -> Checkpoint | None:
        with self.reader() as db:
            row = db.execute(
                "SELECT seq, hash, time, key_id, signature FROM checkpoints"
                " ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return None if row is None else Checkpoint(int(row[0]), *(str(v) for v in row[1:]))

    def hash_at(self, seq: int) -> str | None:
        """The stored hash of record `seq` (None when no such record is held)."""
        with self.reader() as db:
            row = db.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    def prune(self, older_than: datetime) -> int:
        """Delete events stored before the newest checkpoint older than `older_than`.

        The chain stays verifiable: that checkpoint becomes the anchor, and the first
        remaining row links to its hash.
        """
        with self._lock, self._transaction() as db:
            row = db.execute(
                "SELECT seq, hash FROM checkpoints WHERE time < ? ORDER BY seq DESC LIMIT 1",
                (older_than.astimezone(UTC).isoformat(),),
            ).fetchone()
            anchor = int(meta(db, "anchor_seq") or 0)
            if row is None or int(row[0]) <= anchor:
                return 0
            seq, head_hash = int(row[0]), str(row[1])
            deleted = db.execute("DELETE FROM events WHERE seq <= ?", (seq,)).rowcount
            db.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                [("anchor_seq", str(seq)), ("anchor_hash", head_hash)],
            )
            return int(deleted)

    # -- reading ---------------------------------------------------------------------

    def head(self) -> tuple[int, str]:
        with self.reader() as db:
            return self._head(db)

    def count(self) -> int:
        with self.reader() as db:
            (n,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(n)

    def size(self) -> int:
        """Rows held, from the ends of the sequence (O(1); equals count() while intact)."""
        with self.reader() as db:
            (n,) = db.execute("SELECT COALESCE(MAX(seq) - MIN(seq) + 1, 0) FROM events").fetchone()
        return int(n)

    def query(
        self,
        *,
        type_: str | None = None,
        limit: int = 100,
        after_seq: int = 0,
        where: EventFilter | None = None,
    ) -> list[dict[str, Any]]:
        """Stored events in chain order, oldest first, after `after_seq` (the cursor)."""
        flt = where or EventFilter(type=type_)
        clauses = ["seq > ?"]
        args: list[Any] = [after_seq]
        if flt.since is not None:
            clauses.append("ts >= ?")
            args.append(epoch_ms(flt.since))
        if flt.until is not None:
            clauses.append("ts < ?")
            args.append(epoch_ms(flt.until))
        for column in ("type", "principal", "outcome", "tool", "ip"):
            value = getattr(flt, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        sql = (
            "SELECT seq, hash, body FROM events WHERE "  # noqa: S608 - fixed column names
            + " AND ".join(clauses)
            + " ORDER BY seq LIMIT ?"
        )
        args.append(limit)
        with self.reader() as db:
            rows = db.execute(sql, args).fetchall()
        return [{"seq": seq, "hash": digest, **json.loads(body)} for seq, digest, body in rows]

    # -- verifying -------------------------------------------------------------------

    def verify(
        self, signer: CheckpointSigner, *, retention: timedelta | None = None
    ) -> VerifyResult:
        """Walk the chain and the checkpoints; report the first record that is wrong."""
        with self._long_reader() as db:
            return verify_chain(db, signer, retention=retention)
