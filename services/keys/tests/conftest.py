"""Fixtures for the keys service tests: real Redis (root conftest), a stand-in auth
whose JWKS is served over an ASGI transport, the keys app in-process."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from services.keys.tests.helpers import (
    AUTH_INTERNAL,
    AUTH_ISSUER,
    KEYS_URL,
    TOOLS_RESOURCE,
    StandInAuth,
    serve,
)

from bastion_keys.app import create_app
from bastion_keys.settings import Settings

HMAC_SECRET = secrets.token_urlsafe(40)
KEK = secrets.token_urlsafe(40)


@pytest.fixture
def auth() -> StandInAuth:
    return StandInAuth()


@pytest.fixture
def make_settings(redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "spool_dir": str(tmp_path / "spool"),
            "hmac_secret": HMAC_SECRET,
            "key_encryption_key": KEK,
            "public_url": KEYS_URL,
            "auth_issuer": AUTH_ISSUER,
            "auth_internal_url": AUTH_INTERNAL,
            "tools_resource": TOOLS_RESOURCE,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_app(make_settings: Callable[..., Settings], auth: StandInAuth) -> Callable[..., FastAPI]:
    def make(**overrides: Any) -> FastAPI:
        return create_app(make_settings(**overrides), http_client=auth.client())

    return make


@pytest.fixture
async def keys_app(make_app: Callable[..., FastAPI]) -> AsyncIterator[FastAPI]:
    """The keys app (lifespan not started: `serve` starts it)."""
    yield make_app()


@pytest.fixture
async def keys(keys_app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    async with serve(keys_app) as client:
        yield client
