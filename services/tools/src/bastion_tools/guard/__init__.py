"""The guard: MCP Bastion's security pipeline, usable in front of any mcp-SDK server.

Every request to the MCP endpoint passes, in order: Host/Origin checks, authentication
(an `Authenticator`, like the SDK's `TokenVerifier`), revocation and the rate limit in one
Redis round trip, RBAC per tool with step-up, then inside the SDK `tools/list` filtering,
strict argument checks and an audit event per call. Refusals are answered with their
status (401 with the RFC 9728 challenge, 403 `insufficient_scope`, 429 with RateLimit
headers, 503 when Redis is down: fail closed) and audited.

Public API:

- `secure(mcp, config, ...)`: a Starlette app serving `mcp` behind the pipeline, with
  RFC 9728 metadata; the quickest way in (docs/guard.md).
- `Guard`, `GuardConfig`, `GuardDeps`: the ASGI guard itself, to mount yourself.
- `Authenticator` (the seam), `BearerAuthenticator` (JWTs via
  `bastion_common.tokens.TokenValidator`, API keys via `keys`), `CredentialUnavailable`.
- `Rule` / `ToolRule`: a tool's permission and cost; tools without a rule are refused.
- `bastion_tools.policy.ToolCallPolicy`: the SDK middleware (list filtering, second
  check, audit), which `secure` installs.
- `check_arguments(tools)`, `CheckedArguments`, `InvalidArguments`: strict arguments.
- `Refusal`: what the guard answers instead of passing a request on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion_common.auditor import Auditor
from bastion_common.publisher import AuditPublisher
from bastion_tools.guard.arguments import CheckedArguments, InvalidArguments, check_arguments
from bastion_tools.guard.authn import Authenticator, BearerAuthenticator, CredentialUnavailable
from bastion_tools.guard.core import Guard, GuardConfig, GuardDeps
from bastion_tools.guard.rbac import Rule, ToolRule
from bastion_tools.guard.refusals import Refusal
from bastion_tools.ratelimit import RateLimiter

__all__ = [
    "Authenticator",
    "BearerAuthenticator",
    "CheckedArguments",
    "CredentialUnavailable",
    "Guard",
    "GuardConfig",
    "GuardDeps",
    "InvalidArguments",
    "Refusal",
    "Rule",
    "ToolRule",
    "check_arguments",
    "resource_metadata",
    "secure",
]


def resource_metadata(config: GuardConfig) -> dict[str, Any]:
    """The RFC 9728 protected-resource metadata document for `config`."""
    return {
        "resource": config.resource_uri,
        "authorization_servers": list(config.authorization_servers),
        "scopes_supported": list(config.scopes_supported),
        "bearer_methods_supported": ["header"],
    }


def secure(
    mcp: MCPServer[Any],
    config: GuardConfig,
    *,
    authenticator: Authenticator,
    rules: Mapping[str, ToolRule],
    redis: Redis,
    audit: AuditPublisher,
    service: str = "mcp",
    path: str = "/mcp",
    stateless_http: bool = False,
    json_response: bool = True,
) -> Starlette:
    """A Starlette app serving `mcp` at `path` behind the whole pipeline.

    `rules` names the permission (OAuth scope) and cost of each tool; a tool without a
    rule is hidden and refused. `redis` holds the rate-limit buckets and the revocation
    denylist; `audit` receives every event (`service` names the publisher in them). The
    app's lifespan starts and stops the publisher, the limiter and the SDK's session
    manager. The metadata document is served at the RFC 9728 §3.1 well-known path."""
    from bastion_tools.policy import ToolCallPolicy  # it imports guard.rbac: not at the top

    auditor = Auditor(audit, service, linger=0.02)
    mcp.middleware.append(ToolCallPolicy(rules, auditor))
    mcp.streamable_http_app(
        streamable_http_path=path,
        json_response=json_response,
        stateless_http=stateless_http,
        max_request_body_size=config.max_body_bytes,
        # Host and Origin are checked by the guard (with audit), not twice.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    guard = Guard(config)
    document = resource_metadata(config)

    async def metadata(request: Request) -> JSONResponse:
        return JSONResponse(document)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await audit.start()
        limiter = RateLimiter(redis)
        try:
            async with mcp.session_manager.run():
                deps = GuardDeps(authenticator, limiter, auditor)
                guard.bind(mcp.session_manager.handle_request, rules, deps)
                try:
                    yield
                finally:
                    guard.unbind()
        finally:
            auditor.flush()
            await limiter.aclose()
            await audit.close()

    return Starlette(
        routes=[
            Route(f"/.well-known/oauth-protected-resource{path}", metadata, methods=["GET"]),
            Route(path, guard),
        ],
        lifespan=lifespan,
    )
