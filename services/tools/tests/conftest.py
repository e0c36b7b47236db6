"""Fixtures for the tools service tests: real Redis (root conftest), a real local HTTP
server standing in for auth / keys / audit over their contracts, ES256 test keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from services.tools.tests.helpers import (
    AUDIT_RESOURCE,
    AUTH_ISSUER,
    CLIENT_SECRET,
    KEYS_ISSUER,
    PUBLIC_URL,
    Minter,
    SigningKey,
    Upstreams,
    free_port,
    serve,
)

from bastion_tools.app import create_app
from bastion_tools.settings import Settings


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    state = Upstreams(
        port=free_port(), auth_keys=[SigningKey("auth-1")], keys_keys=[SigningKey("keys-1")]
    )
    state.start()
    yield state
    state.stop()


@pytest.fixture
def minter(upstreams: Upstreams) -> Minter:
    return Minter(upstreams)


@pytest.fixture
def make_settings(redis_url: str, tmp_path: Path, upstreams: Upstreams) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "spool_dir": str(tmp_path / "spool"),
            "client_secret": CLIENT_SECRET,
            "public_url": PUBLIC_URL,
            "auth_issuer": AUTH_ISSUER,
            "auth_internal_url": upstreams.url,
            "keys_issuer": KEYS_ISSUER,
            "keys_internal_url": f"{upstreams.url}/keys",
            "audit_internal_url": f"{upstreams.url}/audit",
            "audit_resource": AUDIT_RESOURCE,
            "sandbox_root": str(tmp_path / "sandbox"),
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def tools(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx2.AsyncClient]:
    """The tools app with default test settings, as an in-process HTTP client."""
    async with serve(create_app(make_settings())) as client:
        yield client


@pytest.fixture
async def app_running(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    """The tools app with its lifespan running (for clients that bring their own transport)."""
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        yield app
