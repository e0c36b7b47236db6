"""Consumes `audit:events` with a consumer group and stores each event exactly once.

- An entry is acknowledged only after its batch is committed to the store.
- Entries left pending by a consumer that died are claimed back with XAUTOCLAIM once
  they have been idle `claim_idle_ms`; our own pending entries (a restart under the
  same consumer name) are read again first.
- An entry that cannot be parsed goes to the dead-letter stream `audit:dead` with the
  reason, in the same MULTI as its acknowledgement: counted, never silently dropped.
- Redelivery is harmless: the store ignores an event id it already holds, so two
  replicas, a restart or a claim never create a duplicate.
- Sensitive values are redacted again before storing, whatever the publisher did.
- When the store's disk is full nothing is acknowledged: the entries wait in the stream,
  the collector says why (log, metric, `stalled`, which /readyz shows) and retries with
  backoff; once space returns it catches up from its pending entries.
- Each entry's signature (`bastion_common.eventsign`) is checked against the key of the
  service it names: an entry that fails is stored all the same, flagged `verified:
  false` in the chain (the report alerts on it and its detectors leave it out), counted
  and logged; never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bastion_audit.anchor import AnchorBook
from bastion_audit.redis_keys import DEAD_LETTER_MAX, DEAD_LETTER_STREAM
from bastion_audit.store import AuditStore, disk_full
from bastion_common.audit import AUDIT_STREAM, AuditEvent, split_batch
from bastion_common.eventsign import Provenance, check_entry
from bastion_common.logging import get_logger, redact

__all__ = ["DEAD_LETTER_STREAM", "Collector", "StreamStats", "scrub"]

log = get_logger(__name__)
STORED = Counter("bastion_audit_events_stored_total", "Audit events stored")
DEAD = Counter("bastion_audit_dead_letters_total", "Audit entries sent to the dead-letter stream")
CLAIMED = Counter("bastion_audit_claimed_total", "Entries claimed back from idle consumers")
UNVERIFIED = Counter(
    "bastion_audit_unverified_events_total",
    "Events whose stream entry was not signed by the service they claim (kept, flagged)",
)
STALLED = Gauge(
    "bastion_audit_collector_stalled",
    "1 while the collector cannot store (its disk is full): nothing is acknowledged",
)
DISK_FULL = (
    "the audit store's disk is full: events wait in the stream, unacknowledged, "
    "until space is freed"
)
_MAX_RETRY_DELAY = 5.0

_TOP_LEVEL_TEXT = ("principal", "client_id", "tool", "ip")
_RAW_LIMIT = 8192

Entry = tuple[bytes, dict[bytes, bytes] | None]
_Dead = tuple[bytes, dict[bytes, bytes] | None, str]


@dataclass(frozen=True)
class StreamStats:
    lag: int
    pending: int
    dead_letters: int


def scrub(event: AuditEvent) -> AuditEvent:
    """The event with the free-text top-level fields redacted too.

    `details` was redacted again when this process parsed the event (AuditEvent's
    validator runs `redact`), whatever the publisher did; the other text fields are
    checked here for values that look like secrets (tokens, keys, bearer headers).
    """
    top = {name: getattr(event, name) for name in _TOP_LEVEL_TEXT}
    # One pass over all of them first: the common case, nothing to redact, costs one
    # regex scan instead of one per field.
    joined = "\x00".join(v for v in top.values() if v)
    if redact({"v": joined})["v"] == joined:
        return event
    update = {k: v for k, v in redact(top).items() if v != top[k]}
    return event.model_copy(update=update) if update else event


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return "no 'event' field"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        return f"invalid event: {where}: {first['msg']}"[:300]
    if isinstance(exc, ValueError):
        return "invalid event"
    return f"unreadable entry ({type(exc).__name__})"


def _parse(fields: dict[bytes, bytes] | None) -> tuple[list[AuditEvent], str | None]:
    """The entry's events that can be stored, and why the rest cannot (None: all can).

    An entry holds one event or a batch; in a batch each event stands on its own, so one
    bad event sends the entry to the dead letters without holding back the others."""
    if not fields:
        return [], "entry has no fields (deleted from the stream)"
    try:
        if b"events" not in fields:
            return [scrub(AuditEvent.from_stream_fields(fields))], None
        raw = split_batch(fields[b"events"].decode())
    except Exception as exc:  # noqa: BLE001 - whatever breaks parsing must not wedge the stream
        return [], _reason(exc)
    return _batch_events(raw)


def _batch_events(raw: list[dict[str, Any]]) -> tuple[list[AuditEvent], str | None]:
    events: list[AuditEvent] = []
    problem: str | None = None
    for index, item in enumerate(raw):
        try:
            events.append(scrub(AuditEvent.model_validate(item)))
        except Exception as exc:  # noqa: BLE001 - as above, per event
            problem = problem or f"event {index} of the batch: {_reason(exc)}"[:300]
    return events, problem


@dataclass(frozen=True)
class _Batch:
    events: list[AuditEvent]
    dead: list[_Dead]
    provenance: dict[str, Provenance] | None  # by event id; None: entries not checked


def _provenance(
    fields: dict[bytes, bytes], events: list[AuditEvent], keys: Mapping[str, bytes]
) -> Provenance:
    text = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
    return check_entry(text, keys, {event.service for event in events})


def _split_batch(entries: Sequence[Entry], keys: Mapping[str, bytes] | None) -> _Batch:
    batch = _Batch([], [], {} if keys is not None else None)
    for entry_id, fields in entries:
        parsed, problem = _parse(fields)
        batch.events.extend(parsed)
        if problem is not None:
            batch.dead.append((entry_id, fields, problem))
        if batch.provenance is not None and keys is not None and fields and parsed:
            provenance = _provenance(fields, parsed, keys)
            if not provenance.verified:
                UNVERIFIED.inc(len(parsed))
                log.error(
                    "audit.entry_unverified",
                    entry_id=entry_id.decode(),
                    signed_by=provenance.signed_by,
                    problem=provenance.problem,
                    events=len(parsed),
                )
            batch.provenance.update(dict.fromkeys((e.id for e in parsed), provenance))
    return batch


class Collector:
    def __init__(
        self,
        redis: Redis,
        store: AuditStore,
        *,
        group: str,
        consumer: str = "",
        batch_size: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        claim_interval_s: float = 5.0,
        stream: str = AUDIT_STREAM,
        anchors: AnchorBook | None = None,
        event_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = event_keys  # every publisher's entry key (eventsign); None: unchecked
        self._anchors = anchors
        self._store = store
        self._group = group
        self._consumer = consumer or socket.gethostname()
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._claim_interval = claim_interval_s
        self._stream = stream
        self._stopping = False
        self._in_flight: asyncio.Task[int] | None = None
        self.stalled: str | None = None  # why nothing is being stored, while that lasts

    def stop(self) -> None:
        """Finish the batch in hand, then leave `run` (a cancel alone can be swallowed
        by the Redis client and turned into a connection error the loop retries)."""
        self._stopping = True

    async def settle(self) -> None:
        """Wait for a batch still committing after `run` was cancelled (before closing
        the store); what it could not acknowledge is delivered again later."""
        if self._in_flight is not None and not self._in_flight.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._in_flight

    @property
    def consumer(self) -> str:
        return self._consumer

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.5
        while not self._stopping:
            in_flight: asyncio.Task[int] | None = None
            self._in_flight = None
            try:
                await self.ensure_group()
                # Our own pending entries first (a restart after a crash), then new ones.
                while await self.consume_once("0") and not self._stopping:
                    pass
                next_claim = loop.time()
                while not self._stopping:
                    if loop.time() >= next_claim:
                        if in_flight is not None:
                            await in_flight
                            in_flight = None
                        await self.claim_stale()
                        next_claim = loop.time() + self._claim_interval
                    entries = await self._read(">")
                    if not entries:
                        continue
                    # Parse this batch while the previous one commits (its fsync releases
                    # the GIL); batches still commit one after the other, in stream order.
                    parsed = _split_batch(entries, self._keys)
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.create_task(self._commit(entries, parsed))
                    self._in_flight = in_flight
                if in_flight is not None:
                    await in_flight
            except Exception as exc:  # noqa: BLE001 - top-level loop: never die, retry
                # Redis or the store failed (or a bug): nothing of the batch in hand was
                # acknowledged, so it is read again from our pending list on the next turn.
                if in_flight is not None:
                    with contextlib.suppress(Exception):
                        await in_flight
                if disk_full(exc):
                    self._stall(DISK_FULL)
                else:
                    expected = isinstance(exc, RedisError | OSError | sqlite3.Error)
                    (log.warning if expected else log.error)(
                        "audit.collector_retry", reason=type(exc).__name__
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
            else:
                delay = 0.5

    def _stall(self, why: str) -> None:
        if self.stalled is None:
            log.error("audit.collector_stalled", reason=why)
        self.stalled = why
        STALLED.set(1)

    async def _read(self, start: str) -> Sequence[Entry]:
        # redis-py's declared return type is a union no caller can use; the shape is fixed.
        response: Any = await self._redis.xreadgroup(
            self._group,
            self._consumer,
            {self._stream: start},
            count=self._batch_size,
            block=self._block_ms if start == ">" else None,
        )
        if not response:
            return []
        entries: Sequence[Entry] = response[0][1]
        return entries

    async def consume_once(self, start: str) -> int:
        """Read one batch (">" new entries, "0" our own pending ones) and store it."""
        return await self._process(await self._read(start))

    async def claim_stale(self) -> int:
        """Take over entries another consumer read but never acknowledged (XAUTOCLAIM)."""
        handled = 0
        cursor: Any = "0-0"
        while True:
            reply: Any = await self._redis.xautoclaim(
                self._stream,
                self._group,
                self._consumer,
                self._claim_idle_ms,
                start_id=cursor,
                count=self._batch_size,
            )
            cursor, entries = reply[0], reply[1]
            if entries:
                CLAIMED.inc(len(entries))
                log.info("audit.claimed", count=len(entries), consumer=self._consumer)
                handled += await self._process(entries)
            if cursor in (b"0-0", "0-0"):
                return handled

    async def _process(self, entries: Sequence[Entry]) -> int:
        if not entries:
            return 0
        return await self._commit(entries, _split_batch(entries, self._keys))

    async def _commit(self, entries: Sequence[Entry], batch: _Batch) -> int:
        events, dead = batch.events, batch.dead
        stored = await self._store_events(events, batch.provenance) if events else 0
        STORED.inc(stored)
        if self.stalled is not None:
            log.info("audit.collector_resumed", stored=stored)
            self.stalled = None
            STALLED.set(0)
        # The dead letters and the acknowledgement travel together (MULTI), so a crash
        # cannot acknowledge an entry whose dead letter was not written.
        async with self._redis.pipeline(transaction=True) as pipe:
            for entry_id, fields, reason in dead:
                raw = {
                    k.decode(errors="replace"): v.decode(errors="replace")
                    for k, v in (fields or {}).items()
                }
                pipe.xadd(
                    DEAD_LETTER_STREAM,
                    {"entry_id": entry_id, "reason": reason, "raw": repr(raw)[:_RAW_LIMIT]},
                    maxlen=DEAD_LETTER_MAX,
                    approximate=True,
                )
            pipe.xack(self._stream, self._group, *[entry_id for entry_id, _ in entries])
            await pipe.execute()
        for entry_id, _fields, reason in dead:
            DEAD.inc()
            log.error("audit.dead_letter", entry_id=entry_id.decode(), reason=reason)
        return len(entries)

    async def _store_events(
        self, events: list[AuditEvent], provenance: dict[str, Provenance] | None
    ) -> int:
        if self._anchors is None:
            return await asyncio.to_thread(self._store.add_batch, events, provenance)
        async with self._anchors.lock:
            stored = await asyncio.to_thread(self._store.add_batch, events, provenance)
            if self._store.take_checkpointed():
                # The checkpoint add_batch just wrote goes outside the database too.
                # Should this fail, the maintenance loop anchors the newest checkpoint
                # again within its interval.
                newest = await asyncio.to_thread(self._store.newest_checkpoint)
                if newest is not None:
                    await self._anchors.write(newest)
        return stored

    async def stats(self) -> StreamStats:
        lag = pending = 0
        groups: Any = await self._redis.xinfo_groups(self._stream)
        for group in groups:
            name = group.get("name") or group.get(b"name")
            if name in (self._group, self._group.encode()):
                lag = int(group.get("lag") or 0)
                pending = int(group.get("pending") or 0)
        dead = int(await self._redis.xlen(DEAD_LETTER_STREAM))
        return StreamStats(lag=lag, pending=pending, dead_letters=dead)

    async def trim(self) -> None:
        """Drop stream entries every group has acknowledged (oldest pending or delivered)."""
        groups: Any = await self._redis.xinfo_groups(self._stream)
        if not groups:
            return
        floor: tuple[int, int] | None = None
        for group in groups:
            name = group.get("name")
            candidates = [group.get("last-delivered-id")]
            summary: Any = await self._redis.xpending(self._stream, name)
            if summary and summary.get("pending"):
                candidates.append(summary.get("min"))
            for raw in candidates:
                if not raw:
                    continue
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                ms, _, sub = text.partition("-")
                point = (int(ms), int(sub or 0))
                floor = point if floor is None or point < floor else floor
        if floor is not None and floor > (0, 0):
            # MINID keeps the entry at `floor` itself (still pending or last delivered).
            await self._redis.xtrim(self._stream, minid=f"{floor[0]}-{floor[1]}", approximate=True)
