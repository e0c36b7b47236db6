"""Consumes `audit:events` with a consumer group and stores each event once.

An entry is acknowledged only after its batch is committed to the store. Entries
that cannot be parsed go to the dead-letter stream `audit:dead` with the reason, then
are acknowledged: counted, never silently dropped.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bastion_audit.store import AuditStore
from bastion_common.audit import AUDIT_STREAM, AuditEvent
from bastion_common.logging import get_logger

__all__ = ["DEAD_LETTER_STREAM", "Collector"]

DEAD_LETTER_STREAM = "audit:dead"
log = get_logger(__name__)
STORED = Counter("bastion_audit_events_stored_total", "Audit events stored")
DEAD = Counter("bastion_audit_dead_letters_total", "Audit entries sent to the dead-letter stream")


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
    ) -> None:
        self._redis = redis
        self._store = store
        self._group = group
        self._consumer = consumer or socket.gethostname()
        self._batch_size = batch_size
        self._block_ms = block_ms

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(AUDIT_STREAM, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        while True:
            try:
                await self.ensure_group()
                # Our own pending entries first (a restart after a crash), then new ones.
                await self.consume_once("0")
                while True:
                    await self.consume_once(">")
            except (RedisError, OSError) as exc:
                log.warning("audit.collector_retry", reason=type(exc).__name__)
                await asyncio.sleep(1)

    async def consume_once(self, start: str) -> int:
        # redis-py's declared return type is a union no caller can use; the shape is fixed.
        response: Any = await self._redis.xreadgroup(
            self._group,
            self._consumer,
            {AUDIT_STREAM: start},
            count=self._batch_size,
            block=self._block_ms if start == ">" else None,
        )
        if not response:
            return 0
        _stream, entries = response[0]
        if not entries:
            return 0
        events: list[AuditEvent] = []
        ids: list[bytes] = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            try:
                events.append(AuditEvent.from_stream_fields(fields))
            except (ValidationError, KeyError, UnicodeDecodeError, ValueError) as exc:
                await self._dead_letter(entry_id, fields, type(exc).__name__)
        stored = await asyncio.to_thread(self._store.add_batch, events) if events else 0
        STORED.inc(stored)
        await self._redis.xack(AUDIT_STREAM, self._group, *ids)
        return len(entries)

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        DEAD.inc()
        log.error("audit.dead_letter", entry_id=entry_id.decode(), reason=reason)
        raw = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
        await self._redis.xadd(
            DEAD_LETTER_STREAM,
            {"entry_id": entry_id, "reason": reason, "raw": repr(raw)[:8192]},
        )
