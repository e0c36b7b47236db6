"""The chain's signed head, anchored outside the audit database (docs/architecture.md,
"Audit record").

Checkpoints inside the database prove that what is there was not rewritten; they cannot
prove that nothing was cut from the end, because whoever deletes the newest events can
delete the checkpoints above them too. So every checkpoint is also written where the
database's writer cannot reach:

- the Redis key `audit:anchor` (`redis_keys.ANCHOR_KEY`), which only the audit service's
  Redis user may write (deploy/redis/users.acl);
- a line `audit.anchor` in the collector's log (shipped off the host by the log pipeline);
- a witness file (`AUDIT_WITNESS_PATH`), on a volume other than the database's.

`check` compares the database with the newest anchor whose signature holds: a record the
anchor names must be there with the anchored hash, and the newest checkpoint and anchor
must be younger than the checkpoint interval plus a margin (the collector refreshes both
at every interval, even when no event arrived). Otherwise verify fails and names the gap.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bastion_audit.redis_keys import ANCHOR_KEY
from bastion_audit.signing import CheckpointSigner
from bastion_audit.store import AuditStore, BadRecord, Checkpoint, VerifyResult
from bastion_common.logging import get_logger

__all__ = ["AnchorBook", "check", "read_consistent"]

log = get_logger(__name__)


def _parse(raw: bytes | str | None) -> Checkpoint | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return Checkpoint(
            int(data["seq"]), str(data["hash"]), str(data["time"]),
            str(data["key_id"]), str(data["signature"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class AnchorBook:
    """Where anchors are written and read back: Redis, the log, the witness file."""

    redis: Redis
    signer: CheckpointSigner
    witness: Path | None = None
    # Held from writing a checkpoint until it is anchored, and by verify while it reads
    # the anchors and the newest checkpoint: verify never sees one without the other.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def write(self, checkpoint: Checkpoint) -> bool:
        """Anchor `checkpoint` everywhere, unless an anchor already names a later record
        or the same record with another hash: then the database lost records since, and
        anchoring its head now would erase the evidence (logged, and False).

        The log line and the witness come first: a Redis failure (raised) must not keep
        the other two from holding the head."""
        found, _ = await self.read()
        for held in found:
            if not self.signer.verify(held.seq, held.hash, held.time, held.signature):
                continue  # garbage is overwritten; verify reports it until then
            if held.seq > checkpoint.seq or (
                held.seq == checkpoint.seq and held.hash != checkpoint.hash
            ):
                log.error("audit.anchor_regressed", anchored_seq=held.seq, head_seq=checkpoint.seq)
                return False
        log.info("audit.anchor", **asdict(checkpoint))
        if self.witness is not None:
            await anyio.to_thread.run_sync(self._write_witness, checkpoint)
        await self.redis.set(ANCHOR_KEY, json.dumps(asdict(checkpoint)))
        return True

    def _write_witness(self, checkpoint: Checkpoint) -> None:
        assert self.witness is not None  # noqa: S101 - the caller checks
        self.witness.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.witness.with_name(self.witness.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(asdict(checkpoint)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.witness)

    async def read(self) -> tuple[list[Checkpoint], list[str]]:
        """Every anchor found (Redis, witness), and where one could not be read."""
        found: list[Checkpoint] = []
        unreadable: list[str] = []
        try:
            raw = await self.redis.get(ANCHOR_KEY)
        except RedisError:
            unreadable.append(f"Redis key {ANCHOR_KEY} (Redis did not answer)")
        else:
            if (cp := _parse(raw)) is not None:
                found.append(cp)
            elif raw:
                unreadable.append(f"Redis key {ANCHOR_KEY}")
        if self.witness is not None and self.witness.exists():
            text = await anyio.to_thread.run_sync(self.witness.read_text)
            if (cp := _parse(text)) is not None:
                found.append(cp)
            else:
                unreadable.append(f"witness file {self.witness}")
        return found, unreadable


async def read_consistent(
    book: AnchorBook, store: AuditStore
) -> tuple[list[Checkpoint], list[str], Checkpoint | None]:
    """The anchors and the newest checkpoint, read while no checkpoint is being anchored."""
    async with book.lock:
        found, unreadable = await book.read()
        newest = await anyio.to_thread.run_sync(store.newest_checkpoint)
    return found, unreadable, newest


def check(
    result: VerifyResult,
    store: AuditStore,
    signer: CheckpointSigner,
    anchors: list[Checkpoint],
    unreadable: list[str],
    newest_checkpoint: Checkpoint | None,
    *,
    max_age: timedelta,
    now: datetime | None = None,
) -> VerifyResult:
    """`result` (the chain's own verification) with what the anchors say added to it;
    `newest_checkpoint` read together with the anchors (`read_consistent`)."""
    now = now or datetime.now(UTC)
    problems = list(result.problems)

    def bad(seq: int, reason: str) -> None:
        problems.append(BadRecord(seq, reason))

    for where in unreadable:
        bad(result.head_seq + 1, f"the anchor in the {where} cannot be read")
    valid = [a for a in anchors if signer.verify(a.seq, a.hash, a.time, a.signature)]
    if len(valid) < len(anchors):
        bad(result.head_seq + 1, "an anchor's signature is invalid (forged or altered)")
    newest = max(valid, key=lambda a: (a.seq, a.time), default=None)
    if newest is None:
        if newest_checkpoint is not None:
            bad(result.head_seq + 1, "no anchor outside the database, yet checkpoints exist")
    elif newest.seq > result.head_seq:
        bad(
            result.head_seq + 1,
            f"records {result.head_seq + 1}..{newest.seq} are missing: the anchor of "
            f"{newest.time} names record {newest.seq}",
        )
    elif newest.seq > result.anchor_seq and store.hash_at(newest.seq) != newest.hash:
        bad(newest.seq, f"record {newest.seq} differs from the anchor of {newest.time}")
    for label, stamp in (
        ("checkpoint", newest_checkpoint),
        ("anchor", newest),
    ):
        if stamp is not None and now - datetime.fromisoformat(stamp.time) > max_age:
            bad(
                stamp.seq + 1,
                f"the newest {label} (record {stamp.seq}, {stamp.time}) is older than the "
                f"checkpoint interval plus margin ({int(max_age.total_seconds())} s): "
                "records after it may have been cut",
            )
    problems.sort(key=lambda p: p.seq)
    return VerifyResult(
        ok=not problems,
        records=result.records,
        first_seq=result.first_seq,
        head_seq=result.head_seq,
        head_hash=result.head_hash,
        checkpoints=result.checkpoints,
        anchor_seq=result.anchor_seq,
        first_bad=problems[0] if problems else None,
        problems=problems,
    )
