"""The authorization endpoint (RFC 6749 §4.1.1, OAuth 2.1 §4.1) with password login,
"not you? sign out" and consent (the pages and the session: `signin`).

Order of checks (RFC 6749 §4.1.2.1): an unknown client or redirect URI gets an error page
and is never redirected to (no open redirect). A malformed request from a known client
gets an error page too: clients register themselves, so redirecting before the person
has done anything would bounce them wherever a client registered (RFC 9700 §4.11.2).
Only the person's answer (sign-in cancelled, access allowed or denied) goes back to the
client, with the unchanged `state` and `iss` (RFC 9207).
"""

from __future__ import annotations

import json
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import Response

from bastion_auth import pkce
from bastion_auth.cimd import resolve_client
from bastion_auth.clients import Client, redirect_uri_matches
from bastion_auth.deps import Ctx, client_ip
from bastion_auth.errors import OAuthError
from bastion_auth.lockout import account_name
from bastion_auth.resources import check_resource, grant_scopes
from bastion_auth.signin import (
    answer,
    back_params,
    browser_session,
    checked_form,
    end_session,
    error_page,
    form_text,
    login_page,
    new_session,
    redirect_to_client,
    refused,
    set_cookie,
    signed_in,
)
from bastion_auth.store import AUTH_REQUEST, AUTH_REQUEST_TTL, SESSION

__all__ = ["router"]

router = APIRouter()


def _single(params: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        raise OAuthError("invalid_request", f"{name} given more than once")
    return values[0] if values else None


@router.get("/authorize", include_in_schema=False)
async def authorize(request: Request, ctx: Ctx) -> Response:
    params = list(request.query_params.multi_items())
    ip = client_ip(request)

    def failed(error: str, client_id: str | None, reason: str | None = None) -> None:
        details = {"reason": reason} if reason else {}
        ctx.event(
            "oauth.request_failed",
            "failure",
            client_id=client_id,
            ip=ip,
            endpoint="authorize",
            error=error,
            **details,
        )

    try:
        client_id = _single(params, "client_id")
        redirect_uri = _single(params, "redirect_uri")
    except OAuthError as exc:
        return error_page(exc.description)
    client: Client | None = None
    if client_id:
        try:
            client = await resolve_client(ctx, client_id)
        except OAuthError as exc:
            failed(exc.error, client_id, exc.description)
            return error_page(f"The client could not be verified: {exc.description}")
    if client is None:
        failed("invalid_client", client_id)
        return error_page("Unknown client. The application must register again.")
    if redirect_uri is None and len(client.redirect_uris) == 1:
        redirect_uri = client.redirect_uris[0]
    if not redirect_uri or not redirect_uri_matches(client.redirect_uris, redirect_uri):
        # RFC 6749 §4.1.2.1: never redirect to an unverified URI.
        failed("invalid_redirect_uri", client.client_id)
        return error_page("The redirect URI is not registered for this client.")
    try:
        state = _single(params, "state")
        if _single(params, "response_type") != "code":
            raise OAuthError("unsupported_response_type", "response_type must be code")
        if "authorization_code" not in client.grant_types:
            raise OAuthError("unauthorized_client", "this client may not use authorization codes")
        challenge = pkce.check_challenge(
            _single(params, "code_challenge"), _single(params, "code_challenge_method")
        )
        resource = check_resource(ctx.settings, [v for k, v in params if k == "resource"])
        scope = _single(params, "scope")
    except OAuthError as exc:
        # RFC 9700 §4.11.2: before the person has done anything, a malformed request is
        # an error page, never a redirect: every client that can reach this endpoint
        # registered itself, so a redirect would bounce people wherever it registered.
        failed(exc.error, client.client_id, exc.description)
        return error_page(f"The application sent a malformed request: {exc.description}.")
    wait = await ctx.authorize_quota.take(ip)
    if wait is not None:  # each request leaves a pending request and maybe a session
        ctx.event("ratelimit.refused", "denied", client_id=client.client_id, ip=ip,
                  limit="authorize_per_ip")  # fmt: skip
        page = error_page("Too many sign-in requests from this address; try again later.", 429)
        page.headers["Retry-After"] = str(wait)
        return page
    request_id = secrets.token_urlsafe(24)
    pending = {
        "client_id": client.client_id,
        # What the pages show of the client, fixed when the request was made.
        "client": {
            "name": client.client_name or client.client_id,
            "verified": client.verified,
            "document_host": client.document_host,
        },
        "refresh": "refresh_token" in client.grant_types,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "resource": resource,
        "scope": scope,
        "state": state,
    }
    await ctx.redis.set(
        AUTH_REQUEST.format(id=request_id), json.dumps(pending), ex=AUTH_REQUEST_TTL
    )
    # Every request asks the person to sign in: a session serves one request only.
    sid, _ = await browser_session(ctx, request)
    if sid is None:
        sid = await new_session(ctx, {})
    response = login_page(ctx, sid, request_id, pending)
    set_cookie(ctx, response, sid)
    return response


@router.post("/login", include_in_schema=False)
async def login(request: Request, ctx: Ctx) -> Response:
    checked = await checked_form(ctx, request, "login")
    if isinstance(checked, Response):
        return checked
    sid, _session_data, request_id, pending, form = checked
    ip = client_ip(request)
    client_id = pending["client_id"]
    if form_text(form, "action") == "cancel":
        ctx.event(
            "auth.consent",
            "denied",
            client_id=client_id,
            ip=ip,
            resource=pending["resource"],
            reason="sign-in cancelled",
        )
        return await answer(
            ctx, sid, request_id, pending, refused(ctx, pending, "the user cancelled sign-in")
        )
    if not ctx.settings.local_login:
        return error_page("Sign-in with a password is switched off here.", 403)
    typed = form_text(form, "username")[:128]
    principal = account_name(typed)
    password = form_text(form, "password")
    generic = "Wrong username or password, or too many attempts. Try again later."
    attempt = await ctx.lockout.reserve(typed, ip)
    if not attempt.allowed:
        ctx.event(
            "auth.login",
            "denied",
            principal=principal,
            client_id=client_id,
            ip=ip,
            reason="account locked" if attempt.refused == 1 else "client IP blocked",
        )
        return login_page(ctx, sid, request_id, pending, error=generic, status=429)
    user = await ctx.users.authenticate(typed, password)
    if user is None:
        ctx.event(
            "auth.login",
            "failure",
            principal=principal,
            client_id=client_id,
            ip=ip,
            reason="bad credentials or disabled account",
        )
        if attempt.locked_seconds:
            ctx.event(
                "auth.lockout",
                "denied",
                principal=principal,
                ip=ip,
                scope="account",
                failures=attempt.failures,
                locked_seconds=attempt.locked_seconds,
            )
        if attempt.ip_failures == ctx.settings.ip_failure_limit:
            ctx.event(
                "auth.lockout",
                "denied",
                principal=principal,
                ip=ip,
                scope="ip",
                failures=attempt.ip_failures,
            )
        return login_page(ctx, sid, request_id, pending, error=generic, status=401)
    await ctx.lockout.succeeded(typed, ip)
    ctx.event("auth.login", principal=user.username, client_id=client_id, ip=ip)
    return await signed_in(ctx, sid, user.username, request_id, pending)


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, ctx: Ctx) -> Response:
    """ "Not you? Sign out": forget who signed in and ask again, for the same request."""
    checked = await checked_form(ctx, request, "logout")
    if isinstance(checked, Response):
        return checked
    sid, session, request_id, pending, _form_data = checked
    await ctx.redis.delete(SESSION.format(id=sid))
    if session.get("username"):
        ctx.event(
            "auth.logout",
            principal=session["username"],
            client_id=pending["client_id"],
            ip=client_ip(request),
        )
    new_sid = await new_session(ctx, {})
    response = login_page(ctx, new_sid, request_id, pending)
    set_cookie(ctx, response, new_sid)
    return response


@router.post("/consent", include_in_schema=False)
async def consent(request: Request, ctx: Ctx) -> Response:
    checked = await checked_form(ctx, request, "consent")
    if isinstance(checked, Response):
        return checked
    sid, session, request_id, pending, form = checked
    ip = client_ip(request)
    user = await ctx.users.get(session.get("username", ""))
    if user is None or user.disabled or session.get("request_id") != request_id:
        return login_page(ctx, sid, request_id, pending, error="Please sign in.")
    if form_text(form, "decision") != "allow":
        ctx.event(
            "auth.consent",
            "denied",
            principal=user.username,
            client_id=pending["client_id"],
            ip=ip,
            resource=pending["resource"],
        )
        return await answer(
            ctx, sid, request_id, pending, refused(ctx, pending, "the user refused access")
        )
    scopes = grant_scopes(ctx.settings, pending["resource"], pending["scope"], roles=user.roles)
    # Claim the request before minting: a second submit must not get a second code.
    if not await ctx.redis.delete(AUTH_REQUEST.format(id=request_id)):
        return error_page("This sign-in request was already answered.")
    code = await ctx.tokens.create_code(
        {
            "client_id": pending["client_id"],
            "redirect_uri": pending["redirect_uri"],
            "code_challenge": pending["code_challenge"],
            "resource": pending["resource"],
            "scopes": scopes,
            "sub": user.username,
        }
    )
    ctx.event(
        "auth.consent",
        principal=user.username,
        client_id=pending["client_id"],
        ip=ip,
        resource=pending["resource"],
        scope=" ".join(scopes),
    )
    ctx.event(
        "oauth.code_issued",
        principal=user.username,
        client_id=pending["client_id"],
        ip=ip,
        resource=pending["resource"],
    )
    redirect = redirect_to_client(
        pending["redirect_uri"], {"code": code, **back_params(ctx, pending)}
    )
    return await end_session(ctx, sid, redirect)
