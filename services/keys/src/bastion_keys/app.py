"""Wiring of the keys service: create_app(settings) builds the FastAPI app, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx2
from fastapi import FastAPI

from bastion_common.errors import install_error_handlers
from bastion_common.service import ServiceState, create_service_app
from bastion_common.tokens import TokenValidator, TrustedIssuer
from bastion_keys import api, exchange, introspection, metadata
from bastion_keys.deps import KeysContext
from bastion_keys.settings import Settings
from bastion_keys.signing import load_or_create_signing_key
from bastion_keys.store import KeyStore
from bastion_keys.usage import UsageTracker

__all__ = ["create_app"]


def create_app(settings: Settings, *, http_client: httpx2.AsyncClient | None = None) -> FastAPI:
    """`http_client` reaches auth's JWKS (tests pass one on an ASGI transport)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        validator = TokenValidator(
            [
                TrustedIssuer(
                    settings.auth_issuer,
                    jwks_url=settings.auth_internal_url + settings.auth_jwks_path,
                    algorithms=("ES256",),
                )
            ],
            audience=settings.public_url,
            http_client=http_client,
        )
        store = KeyStore(state.redis)
        signing_key = await load_or_create_signing_key(
            state.redis, settings.key_encryption_key.get_secret_value()
        )
        usage = UsageTracker(store, settings.usage_flush_seconds)
        state.extra["keys"] = KeysContext(
            settings=settings,
            store=store,
            validator=validator,
            signing_key=signing_key,
            auditor=state.audit,
            usage=usage,
            offered=settings.offered_scopes(),
        )
        await validator.prefetch()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(usage.run)
                try:
                    yield
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await usage.flush()
                await validator.aclose()

    app = create_service_app(
        settings,
        title="MCP Bastion keys",
        extra_lifespan=lifespan,
        policy_warnings=settings.roles.warnings,
    )
    install_error_handlers(app, unavailable="the key store cannot be reached")
    app.include_router(api.router)
    app.include_router(exchange.router)
    app.include_router(introspection.router)
    app.include_router(metadata.router)
    return app
