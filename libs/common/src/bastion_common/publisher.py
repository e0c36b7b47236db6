"""The audit publisher: appends events to the audit stream and never drops one.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bastion_common.audit import AUDIT_STREAM, batch_fields, flat_fields
from bastion_common.eventsign import EntrySigner
from bastion_common.logging import get_logger
from bastion_common.redis import OwnConnection

__all__ = ["AuditPublisher"]

log = get_logger(__name__)

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
        commands = [("XADD", self._stream, "*", *flat_fields(fields)) for fields in entries]
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
