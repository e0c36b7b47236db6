"""Wiring of the auth service: create_app(settings) builds the FastAPI app, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from bastion_auth import admin, authorize, federated, grants, introspection, revocation
from bastion_auth.clients import SERVICE_CLIENT, ClientStore
from bastion_auth.deps import AuthContext
from bastion_auth.exchange import TOKEN_EXCHANGE
from bastion_auth.federation import Federation
from bastion_auth.idjag import JWT_BEARER, IdJagGrant
from bastion_auth.keys import KeyRing
from bastion_auth.lockout import Lockout
from bastion_auth.pages import STATIC_DIR, STATIC_PATH
from bastion_auth.quota import AddressQuota
from bastion_auth.settings import Settings
from bastion_auth.store import AUTH_REQUEST_TTL, BOOTSTRAP_LOCK
from bastion_auth.tokens import TokenService
from bastion_auth.users import UserStore
from bastion_common.errors import error_response, install_error_handlers
from bastion_common.logging import get_logger
from bastion_common.service import ServiceState, create_service_app
from bastion_common.tokens import TokenValidator, TrustedIssuer

__all__ = ["build_context", "create_app"]

log = get_logger(__name__)


def _own_validator(settings: Settings, keyring: KeyRing) -> TokenValidator:
    """The admin API validates its tokens like any resource server, against this
    server's own JWKS served in-process (no HTTP round trip to itself)."""

    async def serve_jwks(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=await keyring.jwks())

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(serve_jwks))
    issuer = TrustedIssuer(settings.issuer, jwks_url=f"{settings.issuer}/jwks.json")
    return TokenValidator(
        [issuer], settings.admin_resource, http_client=client, min_refetch_interval=1.0
    )


async def build_context(settings: Settings, state: ServiceState) -> AuthContext:
    keyring = KeyRing(state.redis, settings)
    await keyring.ensure_initial()
    users = UserStore(state.redis, settings)
    # Identity providers are configured by the operator; no redirects are followed.
    idp_http = httpx2.AsyncClient(timeout=settings.oidc_timeout, follow_redirects=False)
    federation = Federation(settings, state.redis, users, idp_http)
    ctx = AuthContext(
        settings=settings,
        redis=state.redis,
        audit=state.audit,
        keyring=keyring,
        tokens=TokenService(state.redis, settings, keyring),
        users=users,
        clients=ClientStore(state.redis, dcr_ttl=int(settings.dcr_client_ttl_days * 86400)),
        lockout=Lockout(state.redis, settings),
        admin_validator=_own_validator(settings, keyring),
        federation=federation,
        idjag=IdJagGrant(settings, state.redis, federation.linker, idp_http),
        register_quota=AddressQuota(state.redis, "register", settings.register_per_ip, 3600),
        authorize_quota=AddressQuota(
            state.redis, "authorize", settings.authorize_per_ip, AUTH_REQUEST_TTL
        ),
    )
    if settings.tools_client_secret is not None:
        await ctx.clients.register_service_client(
            SERVICE_CLIENT,
            settings.tools_client_secret.get_secret_value(),
            {
                settings.admin_resource: ["admin:users"],
                settings.audit_resource.rstrip("/"): ["metrics:view"],
                settings.keys_resource.rstrip("/"): [],
            },
            # The gateway exchanges callers' tokens for upstreams' (bastion_auth.exchange).
            grant_types=["client_credentials"]
            + ([TOKEN_EXCHANGE] if settings.exchange_audiences else []),
        )
    for client in settings.idjag_clients:
        await ctx.clients.register_service_client(
            client.client_id, client.secret, {}, grant_types=[JWT_BEARER]
        )
    await _bootstrap_admin(ctx)
    return ctx


async def _bootstrap_admin(ctx: AuthContext) -> None:
    s = ctx.settings
    if not s.bootstrap_admin_username or s.bootstrap_admin_password is None:
        return
    if await ctx.users.count() or not await ctx.redis.set(BOOTSTRAP_LOCK, "1", nx=True, ex=60):
        return
    user = await ctx.users.create(
        s.bootstrap_admin_username, s.bootstrap_admin_password.get_secret_value(), ["admin"]
    )
    await ctx.audit.publish(
        "user.created", principal="bootstrap", username=user.username, roles=user.roles
    )
    log.info("user.bootstrap_admin_created", username=user.username)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        ctx = await build_context(settings, state)
        state.extra["auth"] = ctx
        try:
            yield
        finally:
            await ctx.admin_validator.aclose()
            await ctx.federation.aclose()

    app = create_service_app(
        settings,
        title="MCP Bastion auth",
        extra_lifespan=lifespan,
        docs=False,
        policy_warnings=settings.roles.warnings,
    )

    install_error_handlers(app, unavailable="the sign-in store cannot be reached")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("request.failed", error=type(exc).__name__, path=request.url.path)
        return error_response(500, "server_error", "internal error")

    for module in (admin, authorize, federated, grants, revocation, introspection):
        app.include_router(module.router)
    # The pages' stylesheet: their CSP allows styles from this origin only.
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")
    return app
