"""Usage tracking without a Redis write per presentation.

Each accepted presentation bumps an in-memory counter; a background task folds the
counters into the key records every `flush_seconds` (one pipelined round trip for all
keys used in the interval), and once more on shutdown. So `use_count` and `last_used`
lag reality by at most `flush_seconds` (5 s by default) per replica, plus whatever a
replica that crashes had not flushed yet (lost, not wrong: counts can only be low).
"""

from __future__ import annotations

import time

import anyio
from redis.exceptions import RedisError

from bastion_common.logging import get_logger
from bastion_keys.store import KeyStore

__all__ = ["UsageTracker"]

log = get_logger(__name__)


class UsageTracker:
    def __init__(self, store: KeyStore, flush_seconds: float) -> None:
        self._store = store
        self._interval = flush_seconds
        self._pending: dict[str, tuple[int, float]] = {}

    def record(self, key_id: str) -> None:
        count, _ = self._pending.get(key_id, (0, 0.0))
        self._pending[key_id] = (count + 1, time.time())

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._store.add_usage(batch)
        except (RedisError, OSError) as exc:
            # Put the counts back; they go out with the next flush.
            for key_id, (count, last) in batch.items():
                pending, newest = self._pending.get(key_id, (0, 0.0))
                self._pending[key_id] = (pending + count, max(last, newest))
            log.warning("usage.flush_failed", error=type(exc).__name__, keys=len(batch))

    async def run(self) -> None:
        """Flush every interval until cancelled (the lifespan flushes a last time)."""
        while True:
            await anyio.sleep(self._interval)
            await self.flush()
