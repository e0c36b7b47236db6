"""Wiring of the audit service: the collector and its upkeep run in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import anyio
import httpx2
from fastapi import FastAPI
from redis.asyncio import Redis

from bastion_audit.anchor import AnchorBook
from bastion_audit.collector import Collector
from bastion_audit.maintenance import Maintenance
from bastion_audit.report import Thresholds
from bastion_audit.routes import router
from bastion_audit.settings import Settings
from bastion_audit.signing import CheckpointSigner
from bastion_audit.store import AuditStore
from bastion_common.errors import install_error_handlers
from bastion_common.http import NotReady
from bastion_common.logging import get_logger
from bastion_common.service import ServiceState, create_service_app
from bastion_common.tokens import TokenValidator, TrustedIssuer

__all__ = [
    "anchor_book",
    "create_app",
    "event_keys",
    "max_anchor_age",
    "open_store",
    "thresholds",
]

log = get_logger(__name__)


def thresholds(settings: Settings) -> Thresholds:
    return Thresholds(
        brute_force_failures=settings.alert_brute_force_failures,
        spray_accounts=settings.alert_spray_accounts,
        denial_burst=settings.alert_denial_burst,
        denial_burst_window_s=settings.alert_denial_burst_window_s,
        file_reads=settings.alert_file_reads,
        token_ips=settings.alert_token_ips,
        baseline_factor=settings.alert_baseline_factor,
        baseline_min_events=settings.alert_baseline_min_events,
        baseline_periods=settings.alert_baseline_periods,
    )


def open_store(settings: Settings) -> tuple[AuditStore, CheckpointSigner]:
    signer = CheckpointSigner.from_secret(settings.checkpoint_key.get_secret_value())
    store = AuditStore(settings.db_path, signer=signer, checkpoint_every=settings.checkpoint_every)
    return store, signer


def anchor_book(settings: Settings, redis: Redis, signer: CheckpointSigner) -> AnchorBook:
    witness = Path(settings.witness_path) if settings.witness_path else None
    return AnchorBook(redis, signer, witness)


def event_keys(settings: Settings) -> dict[str, bytes] | None:
    """Every publisher's entry key; None (with a warning) when none is configured."""
    if not settings.event_keys:
        log.warning("audit.entries_unchecked", reason="AUDIT_EVENT_KEYS is not set")
        return None
    return {name: key.get_secret_value().encode() for name, key in settings.event_keys.items()}


def max_anchor_age(settings: Settings) -> timedelta:
    """How old the newest checkpoint and anchor may be before verify calls it a cut."""
    return timedelta(seconds=settings.checkpoint_interval_s + settings.anchor_margin_s)


def create_app(settings: Settings, *, http_client: httpx2.AsyncClient | None = None) -> FastAPI:
    retention = timedelta(days=settings.retention_days) if settings.retention_days else None

    @contextlib.asynccontextmanager
    async def collector_lifespan(_app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        store, signer = await anyio.to_thread.run_sync(lambda: open_store(settings))
        anchors = anchor_book(settings, state.redis, signer)
        collector = Collector(
            state.redis,
            store,
            group=settings.consumer_group,
            consumer=settings.consumer_name,
            batch_size=settings.batch_size,
            block_ms=settings.block_ms,
            claim_idle_ms=settings.claim_idle_ms,
            claim_interval_s=settings.claim_interval_s,
            anchors=anchors,
            event_keys=event_keys(settings),
        )
        upkeep = Maintenance(
            store,
            collector,
            checkpoint_interval=settings.checkpoint_interval_s,
            retention=retention,
            prune_interval=settings.prune_interval_s,
            metrics_interval=settings.metrics_interval_s,
            anchors=anchors,
        )
        validator = TokenValidator(
            [
                TrustedIssuer(
                    settings.auth_issuer,
                    jwks_url=f"{settings.auth_internal_url.rstrip('/')}/jwks.json",
                )
            ],
            audience=settings.public_url,
            http_client=http_client,
        )
        state.extra.update(
            store=store,
            signer=signer,
            collector=collector,
            validator=validator,
            thresholds=thresholds(settings),
            retention=retention,
            anchors=anchors,
            max_anchor_age=max_anchor_age(settings),
        )

        async def store_check() -> None:
            await anyio.to_thread.run_sync(store.head)

        tasks = [
            asyncio.create_task(collector.run(), name="audit-collector"),
            asyncio.create_task(upkeep.run(), name="audit-maintenance"),
        ]

        async def collector_check() -> None:
            if tasks[0].done():
                raise RuntimeError("the collector has stopped")
            if collector.stalled is not None:
                raise NotReady(collector.stalled)

        state.checks += [("store", store_check), ("collector", collector_check)]
        try:
            yield
        finally:
            collector.stop()
            upkeep.stopping = True
            for task in tasks:
                task.cancel()
            for task in tasks:
                # Bounded: a cancel swallowed inside a Redis call must not hang shutdown.
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    async with asyncio.timeout(5):
                        await task
            await collector.settle()
            # Sign the head we reached, so a clean shutdown leaves nothing unanchored.
            with contextlib.suppress(Exception):
                await upkeep.checkpoint()
            await validator.aclose()
            await anyio.to_thread.run_sync(store.close)

    app = create_service_app(settings, title="MCP Bastion audit", extra_lifespan=collector_lifespan)
    install_error_handlers(app, unavailable="the audit stream cannot be reached")
    app.include_router(router)
    return app
