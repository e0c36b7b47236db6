"""OAuth 2.0 Protected Resource Metadata (RFC 9728) and the Bearer challenges (RFC 6750).

The metadata names the authorization server and the scopes this resource offers (every
permission the policy file's tools need, `RoleTable.offered`; never `offline_access`,
which is for the authorization server to grant). Every 401 and 403 carries
`resource_metadata` (RFC 9728 §5.1) and the `scope` a client should ask for (RFC 6750 §3;
`guard.refusals.bearer_challenge`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bastion_common.permissions import DEFAULT_ROLES, RoleTable
from bastion_tools.settings import Settings

__all__ = ["metadata_document", "metadata_router", "scopes_supported"]


def scopes_supported(roles: RoleTable) -> tuple[str, ...]:
    return tuple(sorted(roles.offered))


def metadata_document(settings: Settings, roles: RoleTable = DEFAULT_ROLES) -> dict[str, Any]:
    return {
        "resource": settings.resource_uri,
        "authorization_servers": [settings.auth_issuer],
        "scopes_supported": list(scopes_supported(roles)),
        "bearer_methods_supported": ["header"],
        "resource_name": "MCP Bastion tools",
    }


def metadata_router(settings: Settings, roles: RoleTable = DEFAULT_ROLES) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    document = metadata_document(settings, roles)

    async def metadata() -> JSONResponse:
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

    # RFC 9728 §3.1: the path-suffixed form for a resource with a path, and the root
    # form that older clients try first.
    router.add_api_route(
        f"/.well-known/oauth-protected-resource{settings.mcp_path}", metadata, methods=["GET"]
    )
    router.add_api_route("/.well-known/oauth-protected-resource", metadata, methods=["GET"])
    return router
