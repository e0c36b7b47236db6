"""Audit events: the versioned schema and the publisher that never drops one.

Every service describes security-relevant steps as `AuditEvent`s and hands them to an
`AuditPublisher`, which appends them to the Redis stream `audit:events` (the `audit`
service consumes it). Values that look like secrets are redacted before an event leaves
the process.

When Redis cannot be reached the publisher appends events to a local spool file
(JSON lines, fsynced) and a background task replays them in order once Redis answers;
while the spool holds anything, new events queue behind it so order is kept. Replays
may repeat an event after a crash; the collector stores by event id, so a repeat is
harmless.

Two ways to publish:
- `await publish(event)`: the event is in Redis (or the spool) when it returns, after
  every event handed over before it (both forms share one queue, so order is kept);
- `emit(event)`: returns at once; a background flusher sends queued events in batches,
  one round trip per batch, so a hot path does not wait on Redis for its audit record
  (`emit_many(lines)` queues several ready JSON lines as one item, in order).

A stream entry holds one event (`event`: its JSON) or, when several are sent together,
up to 64 (`events`: a JSON array, in order); `AuditEvent.all_from_stream_fields` reads
both. One XADD per batch instead of one per event: redis-py's per-command cost was the
largest part of what auditing a tool call cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import to_json
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bastion_common.contracts import EVENT_TYPES, EventType
from bastion_common.eventsign import EntrySigner
from bastion_common.logging import get_logger, new_id, redact, request_id_var
from bastion_common.redis import OwnConnection
from bastion_common.redisacl import Grant

__all__ = [
    "AUDIT_STREAM",
    "PUBLISH_GRANT",
    "EVENT_TYPES",
    "EventType",
    "SCHEMA_VERSION",
    "AuditEvent",
    "AuditPublisher",
    "Outcome",
    "batch_fields",
    "split_batch",
]

AUDIT_STREAM = "audit:events"
# A publisher may only append to the stream: never read, delete, ack or trim it.
PUBLISH_GRANT = Grant(AUDIT_STREAM, "W", only=("xadd",))
SCHEMA_VERSION: Literal[1] = 1
Outcome = Literal["success", "failure", "denied", "error"]

_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

log = get_logger(__name__)


def _current_request_id() -> str | None:
    return request_id_var.get()


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(at_ns: int) -> datetime:
    """`at_ns` (as `time.time_ns()`) to the microsecond, cut rather than rounded."""
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)


_FROM_CONTEXT: Any = object()  # trusted_json's request_id when the caller gives none


def _type_name(value: Any) -> str:
    return f"<{type(value).__name__}>"


class AuditEvent(BaseModel):
    """One security-relevant fact. Version 1 of the schema; add fields, never repurpose."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    id: str = Field(default_factory=new_id, min_length=8, max_length=64)
    time: datetime = Field(default_factory=_now)
    type: str = Field(max_length=64, description="dotted name, e.g. token.issued")
    service: str = Field(max_length=32)
    outcome: Outcome = "success"
    principal: str | None = Field(default=None, max_length=256)
    client_id: str | None = Field(default=None, max_length=512)
    ip: str | None = Field(default=None, max_length=64)
    tool: str | None = Field(default=None, max_length=64)
    request_id: str | None = Field(default_factory=_current_request_id, max_length=128)
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not _TYPE.match(value):
            raise ValueError("type must be a dotted lower-case name such as token.issued")
        return value

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("time must carry a timezone")
        return value.astimezone(UTC)

    @field_validator("details")
    @classmethod
    def _redacted(cls, value: dict[str, Any]) -> dict[str, Any]:
        return redact(value)

    @classmethod
    def trusted_json(
        cls,
        type_: EventType,
        service: str,
        outcome: Outcome,
        *,
        principal: str | None = None,
        client_id: str | None = None,
        ip: str | None = None,
        tool: str | None = None,
        details: dict[str, Any] | None = None,
        request_id: str | None | object = _FROM_CONTEXT,
        at_ns: int | None = None,
    ) -> str:
        """The JSON line of an event built by the service itself on a hot path (one per
        tool call), as the publisher sends it.

        `request_id` defaults to the current request's, `at_ns` (when the event
        happened, as `time.time_ns()`) to now: a caller that renders events after they
        happened (`bastion_common.auditor.Auditor`) passes both, read when it happened.

        It is what validation would accept (type from EVENT_TYPES, details redacted,
        strings cut to the schema's limits instead of refused) and what the model would
        serialise (fields in the model's order), built without the model: pydantic's
        validators, and even `model_construct`, cost a few times what serialising the
        fields does."""
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown audit event type {type_!r}")
        if request_id is _FROM_CONTEXT:
            request_id = request_id_var.get()
        fields = {
            "schema_version": SCHEMA_VERSION,
            "id": new_id(),
            "time": _now() if at_ns is None else _utc(at_ns),
            "type": type_,
            "service": service[:32],
            "outcome": outcome,
            "principal": principal[:256] if principal is not None else None,
            "client_id": client_id[:512] if client_id is not None else None,
            "ip": ip[:64] if ip is not None else None,
            "tool": tool[:64] if tool is not None else None,
            "request_id": request_id[:128] if isinstance(request_id, str) else None,
            "details": redact(details) if details else {},
        }
        # A value JSON has no form for is named by its type, never rendered or refused:
        # events rendered together must not fail one another.
        return to_json(fields, fallback=_type_name).decode()

    def to_stream_fields(self) -> dict[str, str]:
        return {"v": str(self.schema_version), "event": self.model_dump_json()}

    @classmethod
    def from_stream_fields(cls, fields: dict[bytes, bytes] | dict[str, str]) -> AuditEvent:
        """The event of a one-event entry (`event` field)."""
        return cls.model_validate_json(_text_fields(fields)["event"])

    @classmethod
    def all_from_stream_fields(
        cls, fields: dict[bytes, bytes] | dict[str, str]
    ) -> list[AuditEvent]:
        """The events of any entry: one (`event`) or a batch (`events`, a JSON array)."""
        raw = _text_fields(fields)
        if "event" in raw:
            return [cls.model_validate_json(raw["event"])]
        return [cls.model_validate(event) for event in split_batch(raw["events"])]


def _text_fields(fields: dict[bytes, bytes] | dict[str, str]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }


def batch_fields(events_json: Sequence[str]) -> dict[str, str]:
    """One stream entry for events already serialised (one: `event`, more: `events`)."""
    if len(events_json) == 1:
        return {"v": str(SCHEMA_VERSION), "event": events_json[0]}
    return {"v": str(SCHEMA_VERSION), "events": "[" + ",".join(events_json) + "]"}


def _flat(fields: dict[str, str]) -> list[str]:
    return [part for pair in fields.items() for part in pair]


def split_batch(events: str) -> list[dict[str, Any]]:
    """The events of an `events` field, not yet validated.

    Raises ValueError when the field is not a JSON array of objects."""
    parsed = json.loads(events)
    if not isinstance(parsed, list) or not all(isinstance(e, dict) for e in parsed):
        raise ValueError("events must be a JSON array of objects")
    return parsed


# A queued item: an event's JSON line or several (`emit_many`), and the future a
# `publish` caller awaits.
_Item = tuple[str | tuple[str, ...], asyncio.Future[None] | None]


class AuditPublisher:
    """Appends events to the audit stream; spools to disk while Redis is unreachable."""

    def __init__(
        self,
        redis: Redis,
        spool_path: str | os.PathLike[str],
        *,
        stream: str = AUDIT_STREAM,
        batch_size: int = 256,
        entry_size: int = 64,
        retry_interval: float = 0.5,
        timeout: float = 2.0,
        signer: EntrySigner | None = None,
    ) -> None:
        self._redis = redis
        self._signer = signer  # tags each entry with the service's HMAC (eventsign.py)
        self._conn = OwnConnection(redis, timeout=timeout)  # batches go one at a time
        self._entry_size = max(1, entry_size)
        self._spool = Path(spool_path)
        self._stream = stream
        self._batch_size = batch_size
        self._retry_interval = retry_interval
        self._spool_lock = asyncio.Lock()
        # An emitted event waits here alone; a published one with the future its caller
        # awaits. One queue for both keeps the order in which they were handed over.
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._flusher: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self._closed = False
        # Whether the spool holds events: read from the file once, at start, then kept
        # here (the publisher is the only writer of its spool), so that sending a batch
        # costs no file-system calls.
        self._spooled = False

    @property
    def spooled(self) -> bool:
        """True while events wait in the spool file for Redis to come back."""
        return self._spooled

    async def start(self) -> None:
        self._spooled = self._spool.exists() and self._spool.stat().st_size > 0
        self._flusher = asyncio.create_task(self._flush_loop(), name="audit-flusher")
        if self._spooled:
            self._start_replay()

    async def close(self) -> None:
        """Send what is queued (to Redis or the spool) and stop the background tasks."""
        self._closed = True
        if self._flusher and not self._flusher.done():
            # Let the flusher send what is queued first: a cancel that lands while it is
            # inside a Redis command can be swallowed by the client, and close() would
            # then wait for the flusher forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._queue.join()
        if self._flusher:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        pending = []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        if pending:
            await self._send_items(pending)
        if self._replayer:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        await self._conn.aclose()

    async def publish(self, event: str) -> None:
        """Return once the event (its JSON line, as `AuditEvent.trusted_json` renders it)
        is in Redis or the spool, after every event handed over before it."""
        if self._closed or self._flusher is None or self._flusher.done():
            await self._send([event])
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, done))
        await done

    def emit(self, event: str) -> None:
        """Queue an event's JSON line (`AuditEvent.trusted_json`)."""
        self._queue.put_nowait((event, None))

    def emit_many(self, lines: Sequence[str]) -> None:
        """Queue JSON lines (`AuditEvent.trusted_json`) as one item, in order: what
        `emit` does for each, without a queue round per event."""
        if lines:
            self._queue.put_nowait((tuple(lines), None))

    async def drain(self) -> None:
        """Wait until every emitted event has been sent (or spooled)."""
        await self._queue.join()

    async def _flush_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._send_items(batch)
            except Exception as exc:  # noqa: BLE001 - top-level loop: the flusher must live on
                log.error("audit.send_failed", error=type(exc).__name__, count=len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _send_items(self, items: Sequence[_Item]) -> None:
        events: list[str] = []
        for payload, _ in items:
            if isinstance(payload, tuple):
                events.extend(payload)
            else:
                events.append(payload)
        try:
            await self._send(events)
        except BaseException as exc:
            for _, done in items:
                if done is not None and not done.done():
                    if isinstance(exc, asyncio.CancelledError):
                        done.cancel()
                    else:
                        done.set_exception(exc)
            raise
        for _, done in items:
            if done is not None and not done.done():
                done.set_result(None)

    async def _send(self, lines: Sequence[str]) -> None:
        if not self.spooled:
            try:
                await self._xadd(lines)
                return
            except (RedisError, OSError) as exc:
                log.warning("audit.spooling", reason=type(exc).__name__, count=len(lines))
        await self._append_spool(lines)
        self._start_replay()

    async def _xadd(self, lines: Sequence[str]) -> None:
        """Events (JSON) to the stream, up to `entry_size` per entry, in one round trip:
        one command per entry, not per event."""
        size = self._entry_size
        entries = [batch_fields(lines[i : i + size]) for i in range(0, len(lines), size)]
        if self._signer is not None:
            entries = [self._signer.sign(fields) for fields in entries]
        commands = [("XADD", self._stream, "*", *_flat(fields)) for fields in entries]
        await self._conn.execute(*commands)

    async def _append_spool(self, lines: Sequence[str]) -> None:
        async with self._spool_lock:
            self._spooled = True  # before the write: events sent after these queue behind
            await asyncio.to_thread(self._write_spool, lines)

    def _write_spool(self, lines: Sequence[str]) -> None:
        self._spool.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, "".join(line + "\n" for line in lines).encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _start_replay(self) -> None:
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.create_task(self._replay_loop(), name="audit-replay")

    async def _replay_loop(self) -> None:
        while self.spooled:
            try:
                await self._replay_once()
            except (RedisError, OSError):
                await asyncio.sleep(self._retry_interval)

    async def _replay_once(self) -> None:
        # Hold the lock while sending so nothing is appended between read and truncate.
        async with self._spool_lock:
            text = await asyncio.to_thread(self._spool.read_text)
            lines = [line for line in text.splitlines() if line.strip()]
            events = []
            for line in lines:
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    # A torn last line from a crash mid-write: keep it visible, don't loop on it.
                    log.error("audit.spool_line_unreadable", length=len(line))
                    continue
                events.append(line)
            for start in range(0, len(events), self._batch_size):
                await self._xadd(events[start : start + self._batch_size])
            await asyncio.to_thread(self._spool.write_text, "")
            self._spooled = False  # under the lock: nothing was appended since the read
        log.info("audit.spool_replayed", count=len(events))
