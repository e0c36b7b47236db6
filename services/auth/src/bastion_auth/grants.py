"""The token endpoint (RFC 6749 §3.2): authorization_code (+PKCE, RFC 8707 resource),
refresh_token (rotation, reuse detection, grace window), client_credentials, and the
jwt-bearer grant with an ID-JAG assertion (RFC 7523, `bastion_auth.idjag`), and token
exchange for the gateway (RFC 8693, `bastion_auth.exchange`).

Responses carry `Cache-Control: no-store` (RFC 6749 §5.1); errors are RFC 6749 §5.2 JSON.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from bastion_auth import pkce
from bastion_auth.cimd import resolve_client
from bastion_auth.clientauth import credentials_from
from bastion_auth.clients import Client
from bastion_auth.deps import AuthContext, Ctx, client_ip
from bastion_auth.errors import OAuthError, oauth_error_response
from bastion_auth.exchange import TOKEN_EXCHANGE, exchange_token
from bastion_auth.idjag import JWT_BEARER
from bastion_auth.linking import FederationError
from bastion_auth.resources import check_resource, grant_scopes
from bastion_auth.tokens import token_response
from bastion_common.permissions import parse_scope

__all__ = ["read_form", "router"]

router = APIRouter()
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MULTI_VALUED = frozenset({"resource"})


async def read_form(request: Request) -> tuple[dict[str, str], list[str]]:
    """Form parameters (RFC 6749 §3.2: none repeated) and the list of `resource` values."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise OAuthError("invalid_request", "use application/x-www-form-urlencoded")
    try:
        form = await request.form(max_files=0, max_fields=32, max_part_size=8192)
    except Exception:  # noqa: BLE001 - an unparsable body is a bad request
        raise OAuthError(
            "invalid_request",
            "the request body could not be read as a form (at most 32 fields, 8 KiB each)",
        ) from None
    out: dict[str, str] = {}
    resources: list[str] = []
    for key, value in form.multi_items():
        if not isinstance(value, str):
            raise OAuthError("invalid_request", "no files here")
        if key in MULTI_VALUED:
            resources.append(value)
        elif key in out:
            raise OAuthError("invalid_request", f"{key} given more than once")
        else:
            out[key] = value
    return out, resources


async def authenticate_client(ctx: AuthContext, request: Request, form: dict[str, str]) -> Client:
    creds = credentials_from(request.headers.get("authorization"), form)
    if not creds.client_id:
        raise OAuthError("invalid_client", "client_id is required", 401)
    try:
        client = await resolve_client(ctx, creds.client_id)
    except OAuthError:
        client = None
    return creds.check(client)


@router.post("/token", include_in_schema=False)
async def token(request: Request, ctx: Ctx) -> Response:
    ip = client_ip(request)
    client_id: str | None = None
    grant_type: str | None = None
    try:
        form, resources = await read_form(request)
        grant_type = form.get("grant_type")
        client_id = form.get("client_id")
        client = await authenticate_client(ctx, request, form)
        client_id = client.client_id
        if grant_type not in client.grant_types:
            if (
                grant_type in ("authorization_code", "refresh_token", "client_credentials")
                or (grant_type == JWT_BEARER and ctx.idjag.enabled)
                or (grant_type == TOKEN_EXCHANGE and ctx.settings.exchange_audiences)
            ):
                raise OAuthError("unauthorized_client", "this client may not use this grant")
            raise OAuthError("unsupported_grant_type", "grant_type is not supported")
        if grant_type == "authorization_code":
            body = await _authorization_code(ctx, client, form, resources, ip)
        elif grant_type == "refresh_token":
            body = await _refresh(ctx, client, form, resources, ip)
        elif grant_type == JWT_BEARER:
            body = await _jwt_bearer(ctx, client, form, resources, ip)
        elif grant_type == TOKEN_EXCHANGE:
            body = await exchange_token(ctx, client, form, resources, ip)
        else:
            body = await _client_credentials(ctx, client, form, resources, ip)
    except OAuthError as exc:
        ctx.event(
            "oauth.request_failed",
            "failure",
            client_id=client_id,
            ip=ip,
            endpoint="token",
            grant_type=grant_type,
            error=exc.error,
            reason=exc.description,
        )
        return oauth_error_response(exc)
    return JSONResponse(body, headers=NO_STORE)


async def _authorization_code(
    ctx: AuthContext, client: Client, form: dict[str, str], resources: list[str], ip: str
) -> dict[str, Any]:
    code = form.get("code")
    if not code or len(code) > 256:
        raise OAuthError("invalid_request", "code is required")
    status, grant = await ctx.tokens.redeem_code(code)
    if status == "replayed":
        # OAuth 2.1 §4.1.3: a replayed code revokes the tokens issued from it.
        assert isinstance(grant, str)  # noqa: S101 - redeem_code's contract
        revoked = await ctx.tokens.revoke_family(grant)
        ctx.event(
            "oauth.code_replayed",
            "denied",
            client_id=client.client_id,
            ip=ip,
            revoked_count=revoked,
        )
        raise OAuthError("invalid_grant", "authorization code was already used")
    if not isinstance(grant, dict):
        raise OAuthError("invalid_grant", "authorization code is invalid or expired")
    # The code is consumed now: any mismatch below burns it (one attempt per code).
    if grant["client_id"] != client.client_id:
        raise OAuthError("invalid_grant", "authorization code was issued to another client")
    if form.get("redirect_uri") != grant["redirect_uri"]:  # RFC 6749 §4.1.3
        raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    pkce.verify(form.get("code_verifier"), grant["code_challenge"])
    resource = check_resource(ctx.settings, resources)
    if resource != grant["resource"]:  # RFC 8707 §2.2
        raise OAuthError("invalid_target", "resource differs from the authorization request")
    user = await ctx.users.get(grant["sub"])
    if user is None or user.disabled:
        raise OAuthError("invalid_grant", "the user can no longer sign in")
    scopes = list(grant["scopes"])
    if "refresh_token" in client.grant_types:
        body = await ctx.tokens.issue_pair(
            sub=user.username,
            client_id=client.client_id,
            resource=resource,
            scopes=scopes,
            roles=user.roles,
            family=grant["family"],
        )
    else:
        access, claims = await ctx.tokens.access_token(
            sub=user.username,
            client_id=client.client_id,
            resource=resource,
            scopes=scopes,
            roles=user.roles,
            family=grant["family"],
        )
        body = token_response(access, claims)
    ctx.event("oauth.code_redeemed", principal=user.username, client_id=client.client_id, ip=ip)
    ctx.event(
        "token.issued",
        principal=user.username,
        client_id=client.client_id,
        ip=ip,
        grant_type="authorization_code",
        aud=resource,
        scope=body["scope"],
    )
    return body


async def _refresh(
    ctx: AuthContext, client: Client, form: dict[str, str], resources: list[str], ip: str
) -> dict[str, Any]:
    refresh = form.get("refresh_token")
    if not refresh:
        raise OAuthError("invalid_request", "refresh_token is required")
    record = await ctx.tokens.refresh_record(refresh)
    # Checked before rotating, so another client cannot burn someone else's token.
    if record is None or record["client_id"] != client.client_id:
        raise OAuthError("invalid_grant", "refresh token is invalid, expired or revoked")
    if resources and check_resource(ctx.settings, resources) != record["resource"]:
        raise OAuthError("invalid_target", "a refresh token is good for its own resource only")
    original = parse_scope(record["scope"])
    requested = parse_scope(form.get("scope")) if form.get("scope") else original
    if not requested <= original:  # OAuth 2.1 §4.3.1: narrow, never widen
        raise OAuthError("invalid_scope", "a refresh may narrow scopes, never widen them")
    outcome = await ctx.tokens.rotate_refresh(refresh, record["family"])
    if outcome.status == "reuse":
        revoked = await ctx.tokens.revoke_family(record["family"])
        ctx.event(
            "token.refresh_reuse",
            "denied",
            principal=record["sub"],
            client_id=client.client_id,
            ip=ip,
            revoked_count=revoked,
        )
        raise OAuthError("invalid_grant", "refresh token was already used")
    if outcome.status == "grace":
        pair = await ctx.tokens.rotated_pair(refresh)
        if pair is None:
            raise OAuthError("invalid_grant", "refresh token was already used")
        return pair
    if outcome.status != "ok":
        raise OAuthError("invalid_grant", "refresh token is invalid, expired or revoked")
    try:
        # Signed in through a provider: ask it again who this is, and take its roles.
        await ctx.federation.refresh_roles(record["sub"])
    except FederationError as exc:
        await ctx.tokens.revoke_family(record["family"])
        ctx.event(
            "token.refresh_refused",
            "error" if exc.unavailable else "denied",
            principal=record["sub"],
            client_id=client.client_id,
            ip=ip,
            reason=exc.reason,
        )
        raise OAuthError(
            "invalid_grant", "the identity provider no longer confirms the user"
        ) from None
    user = await ctx.users.get(record["sub"])
    if user is None or user.disabled:
        await ctx.tokens.revoke_family(record["family"])
        raise OAuthError("invalid_grant", "the user can no longer sign in")
    # Roles may have changed since consent: the new token holds no more than they allow.
    scopes = sorted(requested & ctx.settings.roles.permissions_for(user.roles))
    body = await ctx.tokens.issue_pair(
        sub=user.username,
        client_id=client.client_id,
        resource=record["resource"],
        scopes=scopes,
        roles=user.roles,
        family=record["family"],
        refresh_exp=record["exp"],
    )
    await ctx.tokens.remember_rotation(refresh, body)
    ctx.event(
        "token.refreshed",
        principal=user.username,
        client_id=client.client_id,
        ip=ip,
        aud=record["resource"],
        scope=body["scope"],
    )
    return body


async def _client_credentials(
    ctx: AuthContext, client: Client, form: dict[str, str], resources: list[str], ip: str
) -> dict[str, Any]:
    if not client.confidential:
        raise OAuthError("unauthorized_client", "client_credentials is for confidential clients")
    resource = check_resource(ctx.settings, resources)
    if resource not in client.allowed:
        raise OAuthError("invalid_target", "this client may not obtain tokens for that resource")
    scopes = grant_scopes(
        ctx.settings, resource, form.get("scope"), allowed=client.allowed[resource]
    )
    access, claims = await ctx.tokens.access_token(
        sub=client.client_id,
        client_id=client.client_id,
        resource=resource,
        scopes=scopes,
        roles=[],
        ttl=ctx.settings.service_token_ttl,
    )
    ctx.event(
        "token.issued",
        principal=client.client_id,
        client_id=client.client_id,
        ip=ip,
        grant_type="client_credentials",
        aud=resource,
        scope=claims["scope"],
    )
    return token_response(access, claims)


async def _jwt_bearer(
    ctx: AuthContext, client: Client, form: dict[str, str], resources: list[str], ip: str
) -> dict[str, Any]:
    if not client.confidential:  # only clients configured for it (AUTH_IDJAG_CLIENTS)
        raise OAuthError("unauthorized_client", "this grant is for confidential clients")
    result = await ctx.idjag.redeem(client.client_id, form, resources)
    user = result.identity
    access, claims = await ctx.tokens.access_token(
        sub=user.username,
        client_id=client.client_id,
        resource=result.resource,
        scopes=result.scopes,
        roles=user.roles,
    )
    ctx.event(
        "token.issued",
        principal=user.username,
        client_id=client.client_id,
        ip=ip,
        grant_type=JWT_BEARER,
        aud=result.resource,
        scope=claims["scope"],
        idp=result.issuer,
        roles=user.roles,
    )
    return token_response(access, claims)
