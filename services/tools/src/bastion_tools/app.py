"""Wiring of the tools service: create_app(settings) builds the FastAPI app, nothing more.

Routes: the MCP endpoint (`settings.mcp_path`, streamable HTTP from the `mcp` SDK behind
`guard.Guard`), RFC 9728 metadata, and the common /healthz /readyz /metrics. The
lifespan opens what the pipeline needs (JWKS cache, rate limiter, outbound clients,
sandbox, API-key revocation feed) and starts the SDK's session manager.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
from fastapi import FastAPI
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route

from bastion_common.permissions import DEFAULT_ROLES, RoleTable
from bastion_common.policyfile import Policy
from bastion_common.redis import create_redis
from bastion_common.service import ServiceState, create_service_app
from bastion_common.tokens import TokenValidator, TrustedIssuer
from bastion_tools.apikeys import ApiKeyVerifier
from bastion_tools.gateway import Gateway, GatewayForwarder, GatewayRecord, PinStore, Rules
from bastion_tools.gateway import admin_router as gateway_admin_router
from bastion_tools.guard import BearerAuthenticator, Guard, GuardConfig, GuardDeps
from bastion_tools.metadata import metadata_router, scopes_supported
from bastion_tools.policy import ToolCallPolicy
from bastion_tools.ratelimit import RateLimiter
from bastion_tools.settings import Settings
from bastion_tools.tools.catalog import ToolDeps, build_catalog
from bastion_tools.tools.sandbox import Sandbox
from bastion_tools.tools.weather import WeatherStore
from bastion_tools.upstream import ServiceTokens, Upstream

__all__ = ["create_app", "guard_config", "trusted_issuers"]


def trusted_issuers(settings: Settings) -> list[TrustedIssuer]:
    """auth and keys, each ES256 against its JWKS."""
    auth = TrustedIssuer(
        settings.auth_issuer, jwks_url=settings.auth_internal_url + settings.auth_jwks_path
    )
    issuers = [auth]
    if settings.keys_issuer:
        issuers.append(
            TrustedIssuer(
                settings.keys_issuer, jwks_url=settings.keys_internal_url + settings.keys_jwks_path
            )
        )
    return issuers


def guard_config(settings: Settings, roles: RoleTable = DEFAULT_ROLES) -> GuardConfig:
    """What the guard enforces; `roles` is the policy file's (scopes offered, limits)."""
    return GuardConfig(
        resource_uri=settings.resource_uri,
        resource_metadata_url=settings.resource_metadata_url,
        scopes_supported=scopes_supported(roles),
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
        authorization_servers=(settings.auth_issuer,),
        max_body_bytes=settings.max_body_bytes,
        rate_limits=settings.rate_limits,
        role_limits=roles.rate_limits,
        ip_capacity=settings.ip_capacity,
        ip_refill_per_second=settings.ip_refill_per_second,
        trusted_proxies=tuple(settings.trusted_proxies),
    )


def create_app(settings: Settings, policy: Policy | None = None) -> FastAPI:
    """`policy` is the validated policy file (`__main__` loads it); None: no upstreams."""
    policy = policy or Policy()
    guard = Guard(guard_config(settings, policy.role_table))

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[None]:
        data = create_redis(settings.redis_url.get_secret_value())
        async with (
            contextlib.aclosing(data),
            httpx2.AsyncClient(timeout=settings.upstream_timeout) as http,
        ):
            validator = TokenValidator(
                trusted_issuers(settings),
                settings.resource_uri,
                http_client=http,
                min_refetch_interval=settings.jwks_refetch_interval,
            )
            with anyio.move_on_after(5):
                await validator.prefetch()  # unreachable issuers are retried on first use
            tokens = ServiceTokens(
                http,
                token_url=f"{settings.auth_internal_url}/token",
                client_id=settings.client_id,
                client_secret=settings.client_secret,
                timeout=settings.upstream_timeout,
            )
            upstream = Upstream(http, tokens, settings.upstream_timeout)
            apikeys = (
                ApiKeyVerifier(
                    upstream,
                    introspect_url=f"{settings.keys_internal_url}/v1/introspect",
                    keys_resource=settings.keys_issuer,
                    audience=settings.resource_uri,
                    cache_seconds=settings.apikey_cache_seconds,
                )
                if settings.keys_issuer
                else None
            )
            sandbox = Sandbox(
                settings.sandbox_root,
                extensions=settings.file_extensions,
                max_bytes=settings.max_file_bytes,
                quota_bytes=settings.sandbox_quota_bytes,
            )
            await anyio.to_thread.run_sync(sandbox.ensure_root)
            auditor = state.audit
            catalog = build_catalog(
                ToolDeps(
                    weather=WeatherStore(data),
                    sandbox=sandbox,
                    upstream=upstream,
                    auth_url=settings.auth_internal_url,
                    admin_resource=settings.admin_resource,
                    audit_url=settings.audit_internal_url,
                    audit_resource=settings.audit_resource,
                ),
                extensions=sandbox.extensions,
                costs=settings.tool_costs,
                max_bytes=settings.max_file_bytes,
            )
            gateway = Gateway(
                policy,
                PinStore(state.redis),
                GatewayRecord(auditor),
                frozenset(catalog),
                stdio_root=Path(settings.stdio_root),
                stdio_path=settings.stdio_path,
            )
            rules = Rules(catalog, gateway)
            mcp: MCPServer[object] = MCPServer(
                name="bastion-tools",
                tools=[spec.tool for spec in catalog.values()],
                middleware=[ToolCallPolicy(rules, auditor), GatewayForwarder(gateway)],
            )
            # Host/Origin are checked by the guard (with audit), not twice.
            mcp.streamable_http_app(
                streamable_http_path=settings.mcp_path,
                json_response=settings.json_response,
                stateless_http=settings.stateless_http,
                max_request_body_size=settings.max_body_bytes,
                transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            )
            manager = mcp.session_manager
            limiter = RateLimiter(state.redis)
            authenticator = BearerAuthenticator(validator, apikeys)
            state.extra.update(validator=validator, upstream=upstream, apikeys=apikeys,
                               catalog=catalog, mcp=mcp, gateway=gateway,
                               authenticator=authenticator)  # fmt: skip
            state.checks.extend((f"upstream:{name}", gateway.check(name)) for name in gateway.links)
            try:
                async with manager.run(), anyio.create_task_group() as tasks:
                    if apikeys is not None:
                        ready = anyio.Event()
                        tasks.start_soon(apikeys.listen, state.redis, ready)
                        with anyio.move_on_after(2):
                            await ready.wait()
                    tasks.start_soon(gateway.run)
                    await gateway.settle(settings.gateway_settle_seconds)
                    guard.bind(
                        manager.handle_request, rules, GuardDeps(authenticator, limiter, auditor)
                    )
                    try:
                        yield
                    finally:
                        guard.unbind()
                        tasks.cancel_scope.cancel()
            finally:
                await limiter.aclose()

    # The MCP endpoint is a hot route: served before FastAPI's middleware and router. The
    # Route below is only reached by near misses (`/mcp/` gets the usual redirect).
    app = create_service_app(
        settings,
        title="MCP Bastion tools",
        extra_lifespan=lifespan,
        policy_warnings=policy.role_table.warnings,
        hot_routes={settings.mcp_path: guard},
        audit_linger=settings.audit_linger_seconds,
    )
    app.include_router(metadata_router(settings, policy.role_table))
    app.include_router(gateway_admin_router())
    app.router.routes.append(Route(settings.mcp_path, endpoint=guard, name="mcp"))
    # The SDK logs each session and tool failure at INFO, and httpx2 each request the
    # gateway forwards; our audit events and metrics cover those, and a JSON line per
    # forwarded call costs each call more CPU than its forwarding does.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    return app
