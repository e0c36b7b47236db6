"""Token revocation (RFC 7009). Access tokens go to the shared denylist until they would
expire (`bastion_common.tokens.denylist_key`); a refresh token revokes its whole grant.
A client may revoke only its own tokens; unknown tokens still get 200 (RFC 7009 §2.2)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from bastion_auth.deps import Ctx, client_ip
from bastion_auth.errors import OAuthError, oauth_error_response
from bastion_auth.grants import NO_STORE, authenticate_client, read_form

__all__ = ["router"]

router = APIRouter()


@router.post("/revoke", include_in_schema=False)
async def revoke(request: Request, ctx: Ctx) -> Response:
    ip = client_ip(request)
    try:
        form, _ = await read_form(request)
        client = await authenticate_client(ctx, request, form)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
    except OAuthError as exc:
        ctx.event("oauth.request_failed", "failure", ip=ip, endpoint="revoke", error=exc.error)
        return oauth_error_response(exc)
    hint = form.get("token_type_hint")
    order = ("refresh", "access") if hint == "refresh_token" else ("access", "refresh")
    for kind in order:
        if kind == "access":
            record = await ctx.tokens.access_record(token)
            if record and record["client_id"] == client.client_id:
                await ctx.tokens.revoke_access(record)
                ctx.event(
                    "token.revoked",
                    principal=record["sub"],
                    client_id=client.client_id,
                    ip=ip,
                    token_type="access_token",  # noqa: S106 - a type name
                    jti=record["jti"],
                )
                break
        else:
            rt = await ctx.tokens.refresh_record(token)
            if rt and rt["client_id"] == client.client_id:
                revoked = await ctx.tokens.revoke_family(rt["family"])
                ctx.event(
                    "token.revoked",
                    principal=rt["sub"],
                    client_id=client.client_id,
                    ip=ip,
                    token_type="refresh_token",  # noqa: S106 - a type name
                    revoked_count=revoked,
                )
                break
    return Response(status_code=200, headers=NO_STORE)
