"""The authorization endpoint (RFC 6749 §4.1.1, OAuth 2.1 §4.1) with login and consent.

Order of checks (RFC 6749 §4.1.2.1): an unknown client or redirect URI gets an error page
and is never redirected to (no open redirect). A malformed request from a known client
gets an error page too: clients register themselves, so redirecting before the person
has done anything would bounce them wherever a client registered (RFC 9700 §4.11.2).
Only the person's answer (sign-in cancelled, access allowed or denied) goes back to the
client, with the unchanged `state` and `iss` (RFC 9207).

A browser session serves one authorization request: signing in binds it to that request,
and answering the consent ends it (the cookie is deleted on the redirect). Loopback
clients share the issuer's cookie scope when the issuer is on localhost (cookies ignore
ports), so a session that outlived its request would let such a client drive
/authorize itself. Forms carry a CSRF token bound to the session and the request.
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
from bastion_auth.federation import FederationError
from bastion_auth.lockout import account_name
from bastion_auth.pages import render, security_headers
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
    return RedirectResponse(target, status_code=302, headers=security_headers())


def _csrf(ctx: AuthContext, sid: str, request_id: str) -> str:
    key = ctx.settings.session_secret.get_secret_value().encode()
    return hmac.new(key, f"{sid}:{request_id}".encode(), hashlib.sha256).hexdigest()


def _cookie_args(ctx: AuthContext) -> dict[str, Any]:
    secure = ctx.settings.issuer.startswith("https://")
    return {"httponly": True, "samesite": "lax", "secure": secure, "path": "/"}


def _set_cookie(ctx: AuthContext, response: Response, sid: str) -> None:
    response.set_cookie(COOKIE, sid, max_age=SESSION_TTL, **_cookie_args(ctx))


async def _end_session(ctx: AuthContext, sid: str, response: Response) -> Response:
    await ctx.redis.delete(SESSION.format(id=sid))
    response.delete_cookie(COOKIE, **_cookie_args(ctx))
    return response


async def _session(ctx: AuthContext, request: Request) -> tuple[str | None, dict[str, Any]]:
    sid = request.cookies.get(COOKIE)
    if not sid or len(sid) > 128:
        return None, {}
    raw = await ctx.redis.get(SESSION.format(id=sid))
    return (sid, json.loads(raw)) if raw else (None, {})


async def _new_session(ctx: AuthContext, data: dict[str, Any], ttl: int = SESSION_TTL) -> str:
    sid = secrets.token_urlsafe(32)
    await ctx.redis.set(SESSION.format(id=sid), json.dumps(data), ex=ttl)
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


def _back(ctx: AuthContext, pending: dict[str, Any]) -> dict[str, str]:
    back = {"iss": ctx.settings.issuer}
    if pending.get("state") is not None:
        back["state"] = pending["state"]
    return back


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
        return _error_page(exc.description)
    client: Client | None = None
    if client_id:
        try:
            client = await resolve_client(ctx, client_id)
        except OAuthError as exc:
            failed(exc.error, client_id, exc.description)
            return _error_page(f"The client could not be verified: {exc.description}")
    if client is None:
        failed("invalid_client", client_id)
        return _error_page("Unknown client. The application must register again.")
    if redirect_uri is None and len(client.redirect_uris) == 1:
        redirect_uri = client.redirect_uris[0]
    if not redirect_uri or not redirect_uri_matches(client.redirect_uris, redirect_uri):
        # RFC 6749 §4.1.2.1: never redirect to an unverified URI.
        failed("invalid_redirect_uri", client.client_id)
        return _error_page("The redirect URI is not registered for this client.")
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
        return _error_page(f"The application sent a malformed request: {exc.description}.")
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
    sid, _ = await _session(ctx, request)
    if sid is None:
        sid = await _new_session(ctx, {})
    response = _login_page(ctx, sid, request_id, pending)
    _set_cookie(ctx, response, sid)
    return response


def _resource_view(ctx: AuthContext, pending: dict[str, Any]) -> dict[str, str]:
    uri = pending["resource"]
    return {"uri": uri, "name": ctx.settings.resource_name(uri)}


def _login_page(
    ctx: AuthContext,
    sid: str,
    request_id: str,
    pending: dict[str, Any],
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    csrf = _csrf(ctx, sid, request_id)
    providers = [
        {
            "name": p.name,
            "href": "/federated/start?"
            + urlencode({"provider": p.id, "request_id": request_id, "csrf_token": csrf}),
        }
        for p in ctx.federation.providers
    ]
    return render(
        "login.html",
        status,
        redirect_uri=pending["redirect_uri"],
        client=pending["client"],
        resource=_resource_view(ctx, pending),
        request_id=request_id,
        csrf_token=csrf,
        error=error,
        providers=providers,
        local_login=ctx.settings.local_login,
    )


def _lifetime(ctx: AuthContext, refresh: bool) -> str:
    def words(seconds: int) -> str:
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds >= size:
                n = seconds // size
                return f"{n} {unit}{'s' if n != 1 else ''}"
        return f"{seconds} seconds"

    s = ctx.settings
    if refresh:
        return (
            f"Until you sign out everywhere or an administrator revokes it, at most "
            f"{words(s.refresh_token_ttl)} (the application may renew its access without "
            f"asking you again)."
        )
    return f"{words(s.access_token_ttl)}, then the application must ask you again."


async def _consent_page(
    ctx: AuthContext, sid: str, username: str, request_id: str, pending: dict[str, Any]
) -> Response:
    user = await ctx.users.get(username)
    if user is None or user.disabled:
        return _login_page(ctx, sid, request_id, pending, error="Please sign in.")
    scopes = grant_scopes(ctx.settings, pending["resource"], pending["scope"], roles=user.roles)
    return render(
        "consent.html",
        redirect_uri=pending["redirect_uri"],
        client=pending["client"],
        resource=_resource_view(ctx, pending),
        redirect_host=_redirect_host(pending["redirect_uri"]),
        username=user.username,
        scopes=[SCOPE_WORDS.get(s, s) for s in scopes],
        lifetime=_lifetime(ctx, pending["refresh"]),
        request_id=request_id,
        csrf_token=_csrf(ctx, sid, request_id),
    )


def _redirect_host(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}: (an application on this device)"


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


async def _answer(
    ctx: AuthContext, sid: str, request_id: str, pending: dict[str, Any], params: dict[str, str]
) -> Response:
    """End the request and the session, and send the browser back to the client."""
    # The pending request is single use: a second submit finds nothing.
    if not await ctx.redis.delete(AUTH_REQUEST.format(id=request_id)):
        return _error_page("This sign-in request was already answered.")
    return await _end_session(ctx, sid, _redirect(pending["redirect_uri"], params))


def _refused(ctx: AuthContext, pending: dict[str, Any], description: str) -> dict[str, str]:
    return {"error": "access_denied", "error_description": description, **_back(ctx, pending)}


@router.post("/login", include_in_schema=False)
async def login(request: Request, ctx: Ctx) -> Response:
    checked = await _checked_form(ctx, request, "login")
    if isinstance(checked, Response):
        return checked
    sid, _session_data, request_id, pending, form = checked
    ip = client_ip(request)
    client_id = pending["client_id"]
    if _text(form, "action") == "cancel":
        ctx.event(
            "auth.consent",
            "denied",
            client_id=client_id,
            ip=ip,
            resource=pending["resource"],
            reason="sign-in cancelled",
        )
        return await _answer(
            ctx, sid, request_id, pending, _refused(ctx, pending, "the user cancelled sign-in")
        )
    if not ctx.settings.local_login:
        return _error_page("Sign-in with a password is switched off here.", 403)
    typed = _text(form, "username")[:128]
    principal = account_name(typed)
    password = _text(form, "password")
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
        return _login_page(ctx, sid, request_id, pending, error=generic, status=429)
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
        return _login_page(ctx, sid, request_id, pending, error=generic, status=401)
    await ctx.lockout.succeeded(typed, ip)
    ctx.event("auth.login", principal=user.username, client_id=client_id, ip=ip)
    return await _signed_in(ctx, sid, user.username, request_id, pending)


async def _signed_in(
    ctx: AuthContext, sid: str, username: str, request_id: str, pending: dict[str, Any]
) -> Response:
    """The consent page, in a new session bound to this request. A session id fixed
    before sign-in is worth nothing, and it lives no longer than the request does."""
    await ctx.redis.delete(SESSION.format(id=sid))
    new_sid = await _new_session(
        ctx, {"username": username, "request_id": request_id}, ttl=AUTH_REQUEST_TTL
    )
    response = await _consent_page(ctx, new_sid, username, request_id, pending)
    _set_cookie(ctx, response, new_sid)
    return response


@router.get("/federated/start", include_in_schema=False)
async def federated_start(request: Request, ctx: Ctx) -> Response:
    """The login page's "Sign in with <provider>" link (a link, not a form, so the page's
    form-action need not name every provider), checked like a form."""
    query = request.query_params
    sid, _ = await _session(ctx, request)
    request_id = query.get("request_id", "")[:128]
    token = query.get("csrf_token", "")
    if sid is None or not token or not hmac.compare_digest(token, _csrf(ctx, sid, request_id)):
        return _error_page("This link has expired or was not made by this site. Start again.", 403)
    pending = await _pending(ctx, request_id)
    if pending is None:
        return _error_page("This sign-in request has expired. Start again from the application.")
    provider = ctx.federation.get(query.get("provider", ""))
    if provider is None:
        return _login_page(
            ctx, sid, request_id, pending, error="Unknown sign-in method.", status=400
        )
    try:
        target = await ctx.federation.begin(provider.id, sid, request_id)
    except FederationError as exc:
        return _federation_failed(ctx, request, sid, request_id, pending, provider.id, exc)
    return RedirectResponse(target, status_code=303, headers=security_headers())


@router.get("/federated/callback", include_in_schema=False)
async def federated_callback(request: Request, ctx: Ctx) -> Response:
    query = request.query_params
    sid, _ = await _session(ctx, request)
    record = await ctx.federation.take_state(query.get("state", ""), sid)
    if record is None or sid is None:
        ctx.event(
            "auth.login",
            "denied",
            ip=client_ip(request),
            method="oidc",
            reason="unknown, used or foreign state",
        )
        return _error_page("This sign-in has expired or was started elsewhere. Start again.")
    request_id, provider_id = record["request_id"], record["provider"]
    pending = await _pending(ctx, request_id)
    if pending is None:
        return _error_page("This sign-in request has expired. Start again from the application.")
    provider = ctx.federation.get(provider_id)
    name = provider.name if provider else provider_id
    try:
        if query.get("error"):
            refused = query.get("error") == "access_denied"
            raise FederationError(
                f"You did not let {name} sign you in."
                if refused
                else f"{name} refused the sign-in.",
                f"provider answered {query.get('error', '')[:64]}",
            )
        code = query.get("code", "")
        if not code or len(code) > 2048:
            raise FederationError(f"{name} sent no sign-in code. Start again.", "no code")
        identity = await ctx.federation.finish(record, code)
    except FederationError as exc:
        return _federation_failed(ctx, request, sid, request_id, pending, provider_id, exc)
    ctx.event(
        "auth.login",
        principal=identity.username,
        client_id=pending["client_id"],
        ip=client_ip(request),
        method="oidc",
        provider=provider_id,
        roles=identity.roles,
    )
    return await _signed_in(ctx, sid, identity.username, request_id, pending)


def _federation_failed(
    ctx: AuthContext,
    request: Request,
    sid: str,
    request_id: str,
    pending: dict[str, Any],
    provider_id: str,
    exc: FederationError,
) -> Response:
    """The login page again, saying what went wrong; Cancel there tells the client."""
    ctx.event(
        "auth.login",
        "error" if exc.unavailable else "failure",
        client_id=pending["client_id"],
        ip=client_ip(request),
        method="oidc",
        provider=provider_id,
        reason=exc.reason,
    )
    status = 503 if exc.unavailable else 401
    return _login_page(ctx, sid, request_id, pending, error=exc.message, status=status)


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, ctx: Ctx) -> Response:
    """ "Not you? Sign out": forget who signed in and ask again, for the same request."""
    checked = await _checked_form(ctx, request, "logout")
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
    new_sid = await _new_session(ctx, {})
    response = _login_page(ctx, new_sid, request_id, pending)
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
    if user is None or user.disabled or session.get("request_id") != request_id:
        return _login_page(ctx, sid, request_id, pending, error="Please sign in.")
    if _text(form, "decision") != "allow":
        ctx.event(
            "auth.consent",
            "denied",
            principal=user.username,
            client_id=pending["client_id"],
            ip=ip,
            resource=pending["resource"],
        )
        return await _answer(
            ctx, sid, request_id, pending, _refused(ctx, pending, "the user refused access")
        )
    scopes = grant_scopes(ctx.settings, pending["resource"], pending["scope"], roles=user.roles)
    # Claim the request before minting: a second submit must not get a second code.
    if not await ctx.redis.delete(AUTH_REQUEST.format(id=request_id)):
        return _error_page("This sign-in request was already answered.")
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
    redirect = _redirect(pending["redirect_uri"], {"code": code, **_back(ctx, pending)})
    return await _end_session(ctx, sid, redirect)
