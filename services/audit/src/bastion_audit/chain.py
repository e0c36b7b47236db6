"""The hash chain of the audit store, and the walk that verifies it (`verify_chain`).

Every row carries `prev_hash` and `hash = SHA-256(prev_hash "\\n" body)`, where `body`
is the event's canonical JSON (sorted keys, no spaces); a few columns are derived from
the body for the report's indexes (`row_columns`) and checked against it again. The walk
reports every record that is missing, changed or out of order, checkpoints whose
signature fails, and checkpoints beyond the last record (a cut end). Blocking.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bastion_audit.signing import CheckpointSigner
from bastion_common.contracts import TOKEN_REF_DETAILS

__all__ = [
    "COLUMNS",
    "GENESIS_HASH",
    "BadRecord",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
    "epoch_ms",
    "meta",
    "row_columns",
    "verify_chain",
]

GENESIS_HASH = "0" * 64
_VERIFY_CHUNK = 5000


def canonical_json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def meta(db: sqlite3.Connection, name: str) -> str | None:
    """A value of the store's `meta` table (the retention anchor), None when unset."""
    row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


# Columns derived from the body: filled on insert and checked again by verify.
COLUMNS = (
    "event_id",
    "ts",
    "type",
    "service",
    "outcome",
    "principal",
    "client_id",
    "tool",
    "ip",
    "token_ref",
    "verified",
)
# Detail keys that name the token an event was made with (jti or a token id).
_TOKEN_REF_KEYS = TOKEN_REF_DETAILS


def epoch_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def row_columns(event: dict[str, Any]) -> tuple[Any, ...]:
    details = event.get("details") or {}
    token_ref = next(
        (str(details[k]) for k in _TOKEN_REF_KEYS if isinstance(details, dict) and details.get(k)),
        None,
    )
    return (
        event["id"],
        epoch_ms(datetime.fromisoformat(event["time"])),
        event["type"],
        event["service"],
        event["outcome"],
        event.get("principal"),
        event.get("client_id"),
        event.get("tool"),
        event.get("ip"),
        token_ref,
        _verified(event.get("entry")),
    )


def _verified(entry: Any) -> int | None:
    """The `verified` column from the body's `entry` (set by the collector, `Provenance`)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("verified"), bool):
        return None
    return int(entry["verified"])


@dataclass(frozen=True)
class BadRecord:
    seq: int
    reason: str
    event_id: str | None = None


@dataclass
class VerifyResult:
    ok: bool
    records: int = 0
    first_seq: int | None = None
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    checkpoints: int = 0
    anchor_seq: int = 0
    first_bad: BadRecord | None = None
    problems: list[BadRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = out["problems"][:20]  # the first ones name the gap; bounded
        return out


def verify_chain(
    db: sqlite3.Connection, signer: CheckpointSigner, *, retention: timedelta | None = None
) -> VerifyResult:
    """Walk the chain and the checkpoints on one read snapshot `db`."""
    result = VerifyResult(ok=True)

    def bad(seq: int, reason: str, event_id: str | None = None) -> None:
        result.problems.append(BadRecord(seq, reason, event_id))

    checkpoints = {
        int(seq): (str(h), str(t), str(sig))
        for seq, h, t, sig in db.execute(
            "SELECT seq, hash, time, signature FROM checkpoints ORDER BY seq"
        )
    }
    result.checkpoints = len(checkpoints)
    for seq, (digest, time, signature) in checkpoints.items():
        if not signer.verify(seq, digest, time, signature):
            bad(seq, "checkpoint signature is invalid")
    anchor = int(meta(db, "anchor_seq") or 0)
    prev = GENESIS_HASH
    if anchor:
        result.anchor_seq = anchor
        found = checkpoints.get(anchor)
        if found is None or found[0] != meta(db, "anchor_hash"):
            bad(anchor, "the retention anchor is not a signed checkpoint")
        else:
            prev = found[0]
            stamped = datetime.fromisoformat(found[1])
            if retention is not None and stamped > datetime.now(UTC) - retention:
                bad(anchor, "events were pruned before their retention period ended")
    expected = anchor + 1
    last = anchor
    while True:
        rows = db.execute(
            "SELECT seq, " + ", ".join(COLUMNS) + ", body, prev_hash, hash"  # noqa: S608
            " FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (last, _VERIFY_CHUNK),
        ).fetchall()
        if not rows:
            break
        for row in rows:
            width = len(COLUMNS)
            seq, columns = int(row[0]), tuple(row[1 : 1 + width])
            body, prev_hash, digest = (str(v) for v in row[1 + width :])
            event_id = str(columns[0])
            if result.first_seq is None:
                result.first_seq = seq
            if seq != expected:
                bad(expected, f"records {expected}..{seq - 1} are missing")
            if prev_hash != prev:
                bad(seq, "prev_hash does not match the previous record", event_id)
            if chain_hash(prev_hash, body) != digest:
                bad(seq, "record content does not match its hash", event_id)
            else:
                try:
                    derived = row_columns(json.loads(body))
                except (ValueError, KeyError, TypeError):
                    derived = ()
                if derived != columns:
                    bad(seq, "indexed columns differ from the stored event", event_id)
            stamp = checkpoints.get(seq)
            if stamp is not None and stamp[0] != digest:
                bad(seq, "record hash differs from the signed checkpoint", event_id)
            prev = digest
            expected = seq + 1
            last = seq
            result.records += 1
    result.head_seq, result.head_hash = last, prev
    beyond = [seq for seq in checkpoints if seq > last]
    if beyond:
        bad(last + 1, f"records up to checkpoint {max(beyond)} are missing")

    if result.problems:
        result.ok = False
        result.first_bad = min(result.problems, key=lambda p: p.seq)
    return result
