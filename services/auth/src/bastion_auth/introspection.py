"""Token introspection (RFC 7662) for authenticated confidential clients only."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from bastion_auth.deps import Ctx, client_ip
from bastion_auth.errors import OAuthError, oauth_error_response
from bastion_auth.grants import NO_STORE, authenticate_client, read_form

__all__ = ["router"]

router = APIRouter()
_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope", "roles")


@router.post("/introspect", include_in_schema=False)
async def introspect(request: Request, ctx: Ctx) -> Response:
    try:
        form, _ = await read_form(request)
        client = await authenticate_client(ctx, request, form)
        if not client.confidential:  # RFC 7662 §2.1: the caller must be authorised
            raise OAuthError("invalid_client", "introspection is for confidential clients", 401)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
    except OAuthError as exc:
        ctx.event(
            "authn.failed",
            "denied",
            ip=client_ip(request),
            endpoint="introspect",
            reason=exc.description,
        )
        return oauth_error_response(exc)
    inactive = JSONResponse({"active": False}, headers=NO_STORE)
    record = await ctx.tokens.access_record(token)
    if record is not None:
        # Denylisted, or its subject signed out or disabled since it was issued.
        if record["exp"] <= time.time() or await ctx.tokens.refusal(record):
            return inactive
        body: dict[str, Any] = {"active": True, "token_type": "Bearer"}
        body.update({k: record[k] for k in _CLAIMS if k in record})
        return JSONResponse(body, headers=NO_STORE)
    rt = await ctx.tokens.refresh_record(token)
    if rt is not None and rt["active"] and not await ctx.tokens.family_revoked(rt["family"]):
        return JSONResponse(
            {
                "active": True,
                "token_type": "refresh_token",
                "sub": rt["sub"],
                "client_id": rt["client_id"],
                "scope": rt["scope"],
                "exp": rt["exp"],
                "aud": rt["resource"],
                "iss": ctx.settings.issuer,
            },
            headers=NO_STORE,
        )
    return inactive
