"""Wiring of the audit service: the collector runs in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from bastion_audit.collector import Collector
from bastion_audit.settings import Settings
from bastion_audit.store import AuditStore
from bastion_common.service import ServiceState, create_service_app

__all__ = ["create_app"]


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def collector_lifespan(_app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        store = AuditStore(settings.db_path)
        collector = Collector(
            state.redis,
            store,
            group=settings.consumer_group,
            consumer=settings.consumer_name,
            batch_size=settings.batch_size,
            block_ms=settings.block_ms,
        )
        state.extra["store"] = store
        task = asyncio.create_task(collector.run(), name="audit-collector")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            store.close()

    return create_service_app(
        settings, title="MCP Bastion audit", extra_lifespan=collector_lifespan
    )
