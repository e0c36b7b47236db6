"""The authorization endpoint (RFC 6749 §4.1.1, OAuth 2.1 §4.1) with login and consent.

Order of checks (RFC 6749 §4.1.2.1): an unknown client or redirect URI gets an error page
and is never redirected to (no open redirect); every later error goes back to the client
with `error`, the unchanged `state` and `iss` (RFC 9207). Forms carry a CSRF token bound
to the browser session and the pending request; the session id changes at login.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from bastion_auth import pkce
from bastion_auth.cimd import resolve_client
from bastion_auth.clients import Client, redirect_uri_matches
from bastion_auth.deps import AuthContext, Ctx, client_ip
from bastion_auth.errors import OAuthError
from bastion_auth.pages import SECURITY_HEADERS, render
from bastion_auth.resources import check_resource, grant_scopes
from bastion_auth.store import AUTH_REQUEST, AUTH_REQUEST_TTL, SESSION, SESSION_TTL

__all__ = ["router"]

router = APIRouter()
COOKIE = "bastion_session"
MAX_FORM_FIELD = 4096

SCOPE_WORDS = {
    "weather:read": "Read weather observations",
    "weather:write": "Report weather observations",
    "files:read": "List and read files in the sandbox",
    "files:write": "Write files in the sandbox",
    "files:delete": "Delete files in the sandbox",
    "admin:users": "Manage users and signing keys",
    "metrics:view": "View the security audit report",
}


def _error_page(message: str, status: int = 400) -> Response:
    return render("error.html", status, message=message)


def _redirect(uri: str, params: dict[str, str]) -> Response:
    parts = urlsplit(uri)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    target = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    return RedirectResponse(target, status_code=302, headers=dict(SECURITY_HEADERS))


def _csrf(ctx: AuthContext, sid: str, request_id: str) -> str:
    key = ctx.settings.session_secret.get_secret_value().encode()
    return hmac.new(key, f"{sid}:{request_id}".encode(), hashlib.sha256).hexdigest()


def _set_cookie(ctx: AuthContext, response: Response, sid: str) -> None:
    response.set_cookie(
        COOKIE,
        sid,
        max_age=SESSION_TTL,
        httponly=True,
        samesite="lax",
        secure=ctx.settings.issuer.startswith("https://"),
        path="/",
    )


async def _session(ctx: AuthContext, request: Request) -> tuple[str | None, dict[str, Any]]:
    sid = request.cookies.get(COOKIE)
    if not sid or len(sid) > 128:
        return None, {}
    raw = await ctx.redis.get(SESSION.format(id=sid))
    return (sid, json.loads(raw)) if raw else (None, {})


async def _new_session(ctx: AuthContext, data: dict[str, Any]) -> str:
    sid = secrets.token_urlsafe(32)
    await ctx.redis.set(SESSION.format(id=sid), json.dumps(data), ex=SESSION_TTL)
    return sid


async def _pending(ctx: AuthContext, request_id: str) -> dict[str, Any] | None:
    if not request_id or len(request_id) > 128:
        return None
    raw = await ctx.redis.get(AUTH_REQUEST.format(id=request_id))
    return json.loads(raw) if raw else None


def _single(params: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        raise OAuthError("invalid_request", f"{name} given more than once")
    return values[0] if values else None


@router.get("/authorize", include_in_schema=False)
async def authorize(request: Request, ctx: Ctx) -> Response:
    params = list(request.query_params.multi_items())
    ip = client_ip(request)
    try:
        client_id = _single(params, "client_id")
        redirect_uri = _single(params, "redirect_uri")
    except OAuthError as exc:
        return _error_page(exc.description)
    client: Client | None = None
    if client_id:
        try:
            client = await resolve_client(ctx, client_id)
        except OAuthError as exc:
            ctx.event(
                "oauth.request_failed",
                "failure",
                client_id=client_id,
                ip=ip,
                endpoint="authorize",
                error=exc.error,
                reason=exc.description,
            )
            return _error_page(f"The client could not be verified: {exc.description}")
    if client is None:
        ctx.event(
            "oauth.request_failed",
            "failure",
            client_id=client_id,
            ip=ip,
            endpoint="authorize",
            error="invalid_client",
        )
        return _error_page("Unknown client. The application must register again.")
    if redirect_uri is None and len(client.redirect_uris) == 1:
        redirect_uri = client.redirect_uris[0]
    if not redirect_uri or not redirect_uri_matches(client.redirect_uris, redirect_uri):
        # RFC 6749 §4.1.2.1: never redirect to an unverified URI.
        ctx.event(
            "oauth.request_failed",
            "failure",
            client_id=client.client_id,
            ip=ip,
            endpoint="authorize",
            error="invalid_redirect_uri",
        )
        return _error_page("The redirect URI is not registered for this client.")
    state = _single(params, "state")
    back: dict[str, str] = {"iss": ctx.settings.issuer}
    if state is not None:
        back["state"] = state
    try:
        if _single(params, "response_type") != "code":
            raise OAuthError("unsupported_response_type", "response_type must be code")
        challenge = pkce.check_challenge(
            _single(params, "code_challenge"), _single(params, "code_challenge_method")
        )
        resource = check_resource(ctx.settings, [v for k, v in params if k == "resource"])
        scope = _single(params, "scope")
    except OAuthError as exc:
        ctx.event(
            "oauth.request_failed",
            "failure",
            client_id=client.client_id,
            ip=ip,
            endpoint="authorize",
            error=exc.error,
            reason=exc.description,
        )
        return _redirect(
            redirect_uri, {"error": exc.error, "error_description": exc.description, **back}
        )
    request_id = secrets.token_urlsafe(24)
    pending = {
        "client_id": client.client_id,
        "client_name": client.client_name or client.client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "resource": resource,
        "scope": scope,
        "state": state,
    }
    await ctx.redis.set(
        AUTH_REQUEST.format(id=request_id), json.dumps(pending), ex=AUTH_REQUEST_TTL
    )
    sid, session = await _session(ctx, request)
    if sid and session.get("username"):
        return await _consent_page(ctx, sid, session["username"], request_id, pending)
    if sid is None:
        sid = await _new_session(ctx, {})
    response = _login_page(ctx, sid, request_id, pending)
    _set_cookie(ctx, response, sid)
    return response


def _login_page(
    ctx: AuthContext,
    sid: str,
    request_id: str,
    pending: dict[str, Any],
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    return render(
        "login.html",
        status,
        client_name=pending["client_name"],
        resource=pending["resource"],
        request_id=request_id,
        csrf_token=_csrf(ctx, sid, request_id),
        error=error,
    )


async def _consent_page(
    ctx: AuthContext, sid: str, username: str, request_id: str, pending: dict[str, Any]
) -> Response:
    user = await ctx.users.get(username)
    if user is None or user.disabled:
        return _login_page(ctx, sid, request_id, pending, error="Please sign in.")
    scopes = grant_scopes(ctx.settings, pending["resource"], pending["scope"], roles=user.roles)
    return render(
        "consent.html",
        client_name=pending["client_name"],
        resource=pending["resource"],
        username=user.username,
        scopes=[SCOPE_WORDS.get(s, s) for s in scopes],
        request_id=request_id,
        csrf_token=_csrf(ctx, sid, request_id),
    )


async def _form(request: Request) -> FormData | None:
    try:
        form = await request.form(max_files=0, max_fields=16, max_part_size=MAX_FORM_FIELD)
    except Exception:  # noqa: BLE001 - any unparsable body is a bad request, nothing more
        return None
    return form


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value[:MAX_FORM_FIELD] if isinstance(value, str) else ""


async def _checked_form(
    ctx: AuthContext, request: Request, step: str
) -> tuple[str, dict[str, Any], str, dict[str, Any], FormData] | Response:
    form = await _form(request)
    if form is None:
        return _error_page("The form could not be read.")
    sid, session = await _session(ctx, request)
    request_id = _text(form, "request_id")
    token = _text(form, "csrf_token")
    if sid is None or not token or not hmac.compare_digest(token, _csrf(ctx, sid, request_id)):
        ctx.event(
            "oauth.request_failed",
            "denied",
            ip=client_ip(request),
            endpoint=step,
            error="csrf",
            reason="missing or wrong CSRF token or session",
        )
        return _error_page("This form has expired or was not sent by this site. Start again.", 403)
    pending = await _pending(ctx, request_id)
    if pending is None:
        return _error_page("This sign-in request has expired. Start again from the application.")
    return sid, session, request_id, pending, form


@router.post("/login", include_in_schema=False)
async def login(request: Request, ctx: Ctx) -> Response:
    checked = await _checked_form(ctx, request, "login")
    if isinstance(checked, Response):
        return checked
    sid, _session_data, request_id, pending, form = checked
    ip = client_ip(request)
    username = _text(form, "username")[:128]
    password = _text(form, "password")
    client_id = pending["client_id"]
    generic = "Wrong username or password, or too many attempts. Try again later."
    lock = await ctx.lockout.state(username, ip)
    if lock.refused:
        ctx.event(
            "auth.login",
            "denied",
            principal=username,
            client_id=client_id,
            ip=ip,
            reason="account locked" if lock.account_locked else "client IP blocked",
        )
        return _login_page(ctx, sid, request_id, pending, error=generic, status=429)
    user = await ctx.users.authenticate(username, password)
    if user is None:
        fails, ip_fails, delay = await ctx.lockout.failed(username, ip)
        ctx.event(
            "auth.login",
            "failure",
            principal=username,
            client_id=client_id,
            ip=ip,
            reason="bad credentials or disabled account",
        )
        if delay:
            ctx.event(
                "auth.lockout",
                "denied",
                principal=username,
                ip=ip,
                scope="account",
                failures=fails,
                locked_seconds=delay,
            )
        if ip_fails == ctx.settings.ip_failure_limit:
            ctx.event(
                "auth.lockout", "denied", principal=username, ip=ip, scope="ip", failures=ip_fails
            )
        return _login_page(ctx, sid, request_id, pending, error=generic, status=401)
    await ctx.lockout.succeeded(username)
    # New session id at login: a session fixed before sign-in is worth nothing.
    await ctx.redis.delete(SESSION.format(id=sid))
    new_sid = await _new_session(ctx, {"username": user.username})
    ctx.event("auth.login", principal=user.username, client_id=client_id, ip=ip)
    response = await _consent_page(ctx, new_sid, user.username, request_id, pending)
    _set_cookie(ctx, response, new_sid)
    return response


@router.post("/consent", include_in_schema=False)
async def consent(request: Request, ctx: Ctx) -> Response:
    checked = await _checked_form(ctx, request, "consent")
    if isinstance(checked, Response):
        return checked
    sid, session, request_id, pending, form = checked
    ip = client_ip(request)
    user = await ctx.users.get(session.get("username", ""))
    if user is None or user.disabled:
        return _login_page(ctx, sid, request_id, pending, error="Please sign in.")
    # The pending request is single use: a second submit finds nothing.
    if not await ctx.redis.delete(AUTH_REQUEST.format(id=request_id)):
        return _error_page("This sign-in request was already answered.")
    back: dict[str, str] = {"iss": ctx.settings.issuer}
    if pending["state"] is not None:
        back["state"] = pending["state"]
    decision = _text(form, "decision")
    if decision != "allow":
        ctx.event(
            "auth.consent",
            "denied",
            principal=user.username,
            client_id=pending["client_id"],
            ip=ip,
            resource=pending["resource"],
        )
        return _redirect(
            pending["redirect_uri"],
            {
                "error": "access_denied",
                "error_description": "the user refused access",
                **back,
            },
        )
    scopes = grant_scopes(ctx.settings, pending["resource"], pending["scope"], roles=user.roles)
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
    return _redirect(pending["redirect_uri"], {"code": code, **back})
