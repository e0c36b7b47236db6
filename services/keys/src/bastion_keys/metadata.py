"""This service as an issuer: RFC 8414 metadata and its JWKS (RFC 7517).

Resource servers that trust keys-issued tokens (tools) find the signing key here. The
issuer is KEYS_PUBLIC_URL; only the token-exchange grant is offered, with no client
authentication (the API key is the credential).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bastion_keys.deps import Context
from bastion_keys.exchange import TOKEN_EXCHANGE

__all__ = ["router"]

router = APIRouter(tags=["discovery"])


@router.get("/.well-known/oauth-authorization-server", summary="RFC 8414 metadata")
async def metadata(context: Context) -> dict[str, Any]:
    issuer = context.settings.public_url
    scopes: set[str] = set()
    for offered in context.offered.values():
        scopes |= offered
    return {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks.json",
        "grant_types_supported": [TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        "scopes_supported": sorted(scopes),
        "service_documentation": f"{issuer}/docs",
    }


@router.get("/jwks.json", summary="Public signing keys (RFC 7517)")
async def jwks(context: Context) -> JSONResponse:
    return JSONResponse(
        {"keys": [context.signing_key.public_jwk()]},
        headers={"Cache-Control": "public, max-age=300"},
    )
