"""Admin API (DESIGN.md): users, sign-out-everywhere, signing-key rotation, and the
public endpoints that go with them (JWKS, registration).

Admin calls need an access token for this server's own admin resource with
`admin:users`, validated by `bastion_common.tokens` like any resource server does, and
neither revoked nor issued before its subject was signed out, disabled or demoted
(`bastion_common.subjects`). Reading users is open to such a token from a service (tools
lists users). Every write (create, patch, sign-out, key rotation) needs a person: the
token's subject is a user, not the client itself, and the user store says, now, that the
user is enabled and holds the admin role; a service token may never create an admin.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from bastion_auth.deps import AuthContext, Ctx, client_ip
from bastion_auth.errors import OAuthError, oauth_error_response
from bastion_auth.metadata import metadata_document
from bastion_auth.registration import MAX_BODY_BYTES, client_from_metadata
from bastion_auth.users import UserError
from bastion_common.subjects import principal_refusal
from bastion_common.tokens import Principal, TokenError

__all__ = ["router"]

router = APIRouter()


@router.get("/.well-known/oauth-authorization-server", include_in_schema=False)
@router.get("/.well-known/openid-configuration", include_in_schema=False)
async def metadata(ctx: Ctx) -> Response:
    return JSONResponse(metadata_document(ctx.settings), headers={"Cache-Control": "max-age=300"})


@router.get("/jwks.json", include_in_schema=False)
async def jwks(ctx: Ctx) -> Response:
    return JSONResponse(await ctx.keyring.jwks(), headers={"Cache-Control": "max-age=60"})


@router.post("/register", include_in_schema=False)
async def register(request: Request, ctx: Ctx) -> Response:
    ip = client_ip(request)
    wait = await ctx.register_quota.take(ip)
    if wait is not None:  # each registration is a record in Redis: bounded per address
        ctx.event("ratelimit.refused", "denied", ip=ip, limit="register_per_ip")
        return JSONResponse(
            {"error": "too_many_requests",
             "error_description": "too many client registrations from this address"},
            status_code=429, headers={"Retry-After": str(wait), "Cache-Control": "no-store"},
        )  # fmt: skip
    body = await request.body()
    try:
        if len(body) > MAX_BODY_BYTES:
            raise OAuthError("invalid_client_metadata", "metadata is too large")
        try:
            meta = json.loads(body)
        except ValueError:
            raise OAuthError("invalid_client_metadata", "metadata must be JSON") from None
        client = client_from_metadata(meta)
    except OAuthError as exc:
        ctx.event("client.registered", "failure", ip=ip, error=exc.error, reason=exc.description)
        return oauth_error_response(exc)
    await ctx.clients.save(client)
    ctx.event(
        "client.registered",
        client_id=client.client_id,
        ip=ip,
        source="dcr",
        redirect_uris=client.redirect_uris,
    )
    return JSONResponse(
        client.registration_response(), status_code=201, headers={"Cache-Control": "no-store"}
    )


async def _admin(ctx: AuthContext, request: Request, *, write: bool = False) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    ip = client_ip(request)
    if scheme.lower() != "bearer" or not token:
        raise OAuthError("invalid_token", "a bearer token is required", 401)
    try:
        principal = await ctx.admin_validator.validate(token.strip())
    except TokenError as exc:
        ctx.event("authn.failed", "denied", ip=ip, endpoint="admin", reason=str(exc))
        raise OAuthError("invalid_token", "the access token is not valid here", 401) from None
    refusal = await principal_refusal(ctx.redis, principal)
    if refusal is not None:
        ctx.event(
            "authn.failed",
            "denied",
            principal=principal.subject,
            ip=ip,
            endpoint="admin",
            reason=refusal,
        )
        raise OAuthError("invalid_token", "the access token was revoked", 401)
    if not principal.has("admin:users"):
        ctx.event(
            "authz.denied",
            "denied",
            principal=principal.subject,
            ip=ip,
            endpoint="admin",
            permission="admin:users",
        )
        raise OAuthError("insufficient_scope", "admin:users is required", 403)
    if write and not await _is_person_admin(ctx, principal):
        ctx.event(
            "authz.denied",
            "denied",
            principal=principal.subject,
            client_id=principal.client_id,
            ip=ip,
            endpoint="admin",
            method=request.method,
            reason="admin writes need a person holding the admin role",
        )
        raise OAuthError(
            "access_denied", "changes need a signed-in person holding the admin role", 403
        )
    return principal


async def _is_person_admin(ctx: AuthContext, principal: Principal) -> bool:
    """The token speaks for a user (a client_credentials token's subject is its client),
    and that user, as stored now, is enabled and an admin."""
    if principal.client_id is None or principal.subject == principal.client_id:
        return False
    user = await ctx.users.get(principal.subject)
    return user is not None and not user.disabled and "admin" in user.roles


def _bearer_error(exc: OAuthError) -> Response:
    response = oauth_error_response(exc)
    # RFC 6750 §3: resource errors are announced in WWW-Authenticate: Bearer.
    response.headers["WWW-Authenticate"] = f'Bearer error="{exc.error}"'
    return response


async def _json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > 16384:
        raise OAuthError("invalid_request", "body is too large")
    try:
        data = json.loads(body)
    except ValueError:
        raise OAuthError("invalid_request", "body must be JSON") from None
    if not isinstance(data, dict):
        raise OAuthError("invalid_request", "body must be a JSON object")
    return data


@router.get("/admin/users", include_in_schema=False)
async def list_users(request: Request, ctx: Ctx) -> Response:
    try:
        await _admin(ctx, request)
    except OAuthError as exc:
        return _bearer_error(exc)
    return JSONResponse(
        {"users": [u.public() for u in await ctx.users.all()]},
        headers={"Cache-Control": "no-store"},
    )


@router.post("/admin/users", include_in_schema=False)
async def create_user(request: Request, ctx: Ctx) -> Response:
    try:
        admin = await _admin(ctx, request, write=True)
    except OAuthError as exc:
        return _bearer_error(exc)
    try:
        data = await _json(request)
        username, password, roles = data.get("username"), data.get("password"), data.get("roles")
        if not isinstance(username, str) or not isinstance(password, str):
            raise UserError("username and password are required strings")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise UserError("roles must be a list of role names")
        user = await ctx.users.create(username, password, roles)
    except OAuthError as exc:
        return oauth_error_response(exc)
    except UserError as exc:
        return oauth_error_response(OAuthError("invalid_request", str(exc)))
    ctx.event(
        "user.created",
        principal=admin.subject,
        ip=client_ip(request),
        username=user.username,
        roles=user.roles,
    )
    return JSONResponse(user.public(), status_code=201)


@router.patch("/admin/users/{username}", include_in_schema=False)
async def update_user(username: str, request: Request, ctx: Ctx) -> Response:
    try:
        admin = await _admin(ctx, request, write=True)
    except OAuthError as exc:
        return _bearer_error(exc)
    try:
        data = await _json(request)
        roles, disabled = data.get("roles"), data.get("disabled")
        if roles is not None and (
            not isinstance(roles, list) or not all(isinstance(r, str) for r in roles)
        ):
            raise UserError("roles must be a list of role names")
        if disabled is not None and not isinstance(disabled, bool):
            raise UserError("disabled must be true or false")
        user = await ctx.users.update(username, roles=roles, disabled=disabled)
    except OAuthError as exc:
        return oauth_error_response(exc)
    except UserError as exc:
        return oauth_error_response(OAuthError("invalid_request", str(exc)))
    if user is None:
        return JSONResponse({"error": "not_found", "error_description": "no such user"}, 404)
    if disabled:
        await ctx.tokens.revoke_user(user.username)
    ctx.event(
        "user.updated",
        principal=admin.subject,
        ip=client_ip(request),
        username=user.username,
        roles=user.roles,
        disabled=user.disabled,
    )
    return JSONResponse(user.public())


@router.post("/admin/users/{username}/revoke", include_in_schema=False)
async def revoke_user(username: str, request: Request, ctx: Ctx) -> Response:
    try:
        admin = await _admin(ctx, request, write=True)
    except OAuthError as exc:
        return _bearer_error(exc)
    families = await ctx.tokens.revoke_user(username.lower())
    ctx.event(
        "token.revoked",
        principal=admin.subject,
        ip=client_ip(request),
        username=username.lower(),
        scope="all",
        grants_revoked=families,
    )
    return JSONResponse({"username": username.lower(), "grants_revoked": families})


@router.post("/admin/keys/rotate", include_in_schema=False)
async def rotate_keys(request: Request, ctx: Ctx) -> Response:
    try:
        admin = await _admin(ctx, request, write=True)
        kid, previous = await ctx.keyring.rotate()
    except OAuthError as exc:
        return _bearer_error(exc)
    except RuntimeError as exc:
        return oauth_error_response(OAuthError("invalid_request", str(exc)))
    ctx.event(
        "signing_key.rotated",
        principal=admin.subject,
        ip=client_ip(request),
        kid=kid,
        previous_kid=previous,
    )
    return JSONResponse(
        {
            "kid": kid,
            "previous_kid": previous,
            "signs_from_seconds": ctx.settings.key_publish_lead_seconds,
        }
    )
