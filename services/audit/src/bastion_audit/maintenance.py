"""Background upkeep of the collector: checkpoints, retention, stream trimming, metrics.

One loop, each duty on its own interval. A failing duty is logged and tried again on its
next turn; it never stops the others or the collector.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
from prometheus_client import Gauge, Info

from bastion_audit.anchor import AnchorBook
from bastion_audit.collector import Collector
from bastion_audit.store import AuditStore
from bastion_common.logging import get_logger

__all__ = ["Maintenance"]

log = get_logger(__name__)
HEAD_SEQ = Gauge("bastion_audit_chain_head_seq", "Sequence number of the chain head")
HEAD = Info("bastion_audit_chain_head", "Hash of the chain head")
EVENTS = Gauge("bastion_audit_events_in_store", "Events held in the store")
LAG = Gauge("bastion_audit_consumer_lag", "Stream entries not yet delivered to the group")
PENDING = Gauge("bastion_audit_pending_entries", "Entries delivered but not acknowledged")
DEAD_LETTERS = Gauge("bastion_audit_dead_letter_entries", "Entries in the dead-letter stream")


@dataclass
class Maintenance:
    store: AuditStore
    collector: Collector
    checkpoint_interval: float
    retention: timedelta | None
    prune_interval: float
    metrics_interval: float
    anchors: AnchorBook | None = None
    trim_interval: float = 30.0
    stopping: bool = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = dict.fromkeys(("metrics", "checkpoint", "prune", "trim"), loop.time())
        intervals = {
            "metrics": self.metrics_interval,
            "checkpoint": self.checkpoint_interval,
            "prune": self.prune_interval,
            "trim": self.trim_interval,
        }
        while not self.stopping:
            for duty, at in due.items():
                if loop.time() < at:
                    continue
                due[duty] = loop.time() + intervals[duty]
                try:
                    await getattr(self, duty)()
                except Exception as exc:  # noqa: BLE001 - top-level loop: log, retry next turn
                    log.warning("audit.maintenance_failed", duty=duty, error=type(exc).__name__)
            await asyncio.sleep(max(0.05, min(due.values()) - loop.time()))

    async def metrics(self) -> None:
        seq, digest = await anyio.to_thread.run_sync(self.store.head)
        HEAD_SEQ.set(seq)
        HEAD.info({"hash": digest})
        EVENTS.set(await anyio.to_thread.run_sync(self.store.size))
        stats = await self.collector.stats()
        LAG.set(stats.lag)
        PENDING.set(stats.pending)
        DEAD_LETTERS.set(stats.dead_letters)

    async def checkpoint(self) -> None:
        """Sign the head (again, when it did not move: verify flags a stale one) and
        anchor it outside the database (`anchor.py`)."""
        if self.anchors is None:
            await anyio.to_thread.run_sync(lambda: self.store.checkpoint(refresh=True))
            return
        async with self.anchors.lock:
            seq = await anyio.to_thread.run_sync(lambda: self.store.checkpoint(refresh=True))
            if seq is not None:
                log.info("audit.checkpoint", seq=seq)
            newest = await anyio.to_thread.run_sync(self.store.newest_checkpoint)
            if newest is not None:
                await self.anchors.write(newest)

    async def prune(self) -> None:
        if self.retention is None:
            return
        cutoff = datetime.now(UTC) - self.retention
        deleted = await anyio.to_thread.run_sync(lambda: self.store.prune(cutoff))
        if deleted:
            log.info("audit.pruned", events=deleted, older_than=cutoff.isoformat())

    async def trim(self) -> None:
        await self.collector.trim()
