"""Fixtures for the audit tests: settings on a temp store, the app in-process, a token
issuer. Redis is real (root conftest)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from services.audit.tests.helpers import (
    AUDIT_RESOURCE,
    AUTH_ISSUER,
    CHECKPOINT_KEY,
    JWKS_BASE,
    Issuer,
    PersistentRedis,
)

from bastion_audit.app import create_app
from bastion_audit.settings import Settings
from bastion_audit.signing import CheckpointSigner
from bastion_audit.store import AuditStore


@pytest.fixture
def make_settings(redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "spool_dir": str(tmp_path / "spool"),
            "checkpoint_key": CHECKPOINT_KEY,
            "db_path": str(tmp_path / "audit.sqlite3"),
            "public_url": AUDIT_RESOURCE,
            "auth_issuer": AUTH_ISSUER,
            "auth_internal_url": JWKS_BASE,
            "consumer_name": "test-collector",
            "block_ms": 50,
            "claim_idle_ms": 200,
            "claim_interval_s": 0.1,
            "metrics_interval_s": 0.1,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def signer() -> CheckpointSigner:
    return CheckpointSigner.from_secret(CHECKPOINT_KEY)


@pytest.fixture
def store(tmp_path: Path, signer: CheckpointSigner) -> Iterator[AuditStore]:
    s = AuditStore(tmp_path / "audit.sqlite3", signer=signer, checkpoint_every=1_000_000)
    yield s
    s.close()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
async def app(make_settings: Callable[..., Settings], issuer: Issuer) -> AsyncIterator[FastAPI]:
    async with issuer.client() as jwks_client:
        application = create_app(make_settings(), http_client=jwks_client)
        async with application.router.lifespan_context(application):
            yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://audit.test"
    ) as c:
        yield c


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PersistentRedis]:
    server = PersistentRedis(tmp_path)
    server.start()
    yield server
    server.stop()
