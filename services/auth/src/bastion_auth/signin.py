"""The browser side of sign-in, shared by the password and the provider routes: the
session cookie, CSRF tokens, the pending authorization request, the login and consent
pages, and the answer that sends the browser back to the client.

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

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from bastion_auth.deps import AuthContext, client_ip
from bastion_auth.pages import render, security_headers
from bastion_auth.resources import grant_scopes
from bastion_auth.store import AUTH_REQUEST, AUTH_REQUEST_TTL, SESSION, SESSION_TTL

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


def error_page(message: str, status: int = 400) -> Response:
    return render("error.html", status, message=message)


def redirect_to_client(uri: str, params: dict[str, str]) -> Response:
    parts = urlsplit(uri)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    target = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    return RedirectResponse(target, status_code=302, headers=security_headers())


def csrf_token(ctx: AuthContext, sid: str, request_id: str) -> str:
    key = ctx.settings.session_secret.get_secret_value().encode()
    return hmac.new(key, f"{sid}:{request_id}".encode(), hashlib.sha256).hexdigest()


def _cookie_args(ctx: AuthContext) -> dict[str, Any]:
    secure = ctx.settings.issuer.startswith("https://")
    return {"httponly": True, "samesite": "lax", "secure": secure, "path": "/"}


def set_cookie(ctx: AuthContext, response: Response, sid: str) -> None:
    response.set_cookie(COOKIE, sid, max_age=SESSION_TTL, **_cookie_args(ctx))


async def end_session(ctx: AuthContext, sid: str, response: Response) -> Response:
    await ctx.redis.delete(SESSION.format(id=sid))
    response.delete_cookie(COOKIE, **_cookie_args(ctx))
    return response


async def browser_session(ctx: AuthContext, request: Request) -> tuple[str | None, dict[str, Any]]:
    sid = request.cookies.get(COOKIE)
    if not sid or len(sid) > 128:
        return None, {}
    raw = await ctx.redis.get(SESSION.format(id=sid))
    return (sid, json.loads(raw)) if raw else (None, {})


async def new_session(ctx: AuthContext, data: dict[str, Any], ttl: int = SESSION_TTL) -> str:
    sid = secrets.token_urlsafe(32)
    await ctx.redis.set(SESSION.format(id=sid), json.dumps(data), ex=ttl)
    return sid


async def pending_request(ctx: AuthContext, request_id: str) -> dict[str, Any] | None:
    if not request_id or len(request_id) > 128:
        return None
    raw = await ctx.redis.get(AUTH_REQUEST.format(id=request_id))
    return json.loads(raw) if raw else None


def back_params(ctx: AuthContext, pending: dict[str, Any]) -> dict[str, str]:
    back = {"iss": ctx.settings.issuer}
    if pending.get("state") is not None:
        back["state"] = pending["state"]
    return back


def _resource_view(ctx: AuthContext, pending: dict[str, Any]) -> dict[str, str]:
    uri = pending["resource"]
    return {"uri": uri, "name": ctx.settings.resource_name(uri)}


def login_page(
    ctx: AuthContext,
    sid: str,
    request_id: str,
    pending: dict[str, Any],
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    csrf = csrf_token(ctx, sid, request_id)
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


async def consent_page(
    ctx: AuthContext, sid: str, username: str, request_id: str, pending: dict[str, Any]
) -> Response:
    user = await ctx.users.get(username)
    if user is None or user.disabled:
        return login_page(ctx, sid, request_id, pending, error="Please sign in.")
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
        csrf_token=csrf_token(ctx, sid, request_id),
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


def form_text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value[:MAX_FORM_FIELD] if isinstance(value, str) else ""


async def checked_request(
    ctx: AuthContext, request: Request, step: str, request_id: str, token: str
) -> tuple[str, dict[str, Any], dict[str, Any]] | Response:
    """The browser session and pending request a form or link speaks for, or the error
    page: its CSRF token must be this session's for this request (audited if not)."""
    sid, session = await browser_session(ctx, request)
    if sid is None or not token or not hmac.compare_digest(token, csrf_token(ctx, sid, request_id)):
        ctx.event(
            "oauth.request_failed",
            "denied",
            ip=client_ip(request),
            endpoint=step,
            error="csrf",
            reason="missing or wrong CSRF token or session",
        )
        return error_page("This page has expired or was not sent by this site. Start again.", 403)
    pending = await pending_request(ctx, request_id)
    if pending is None:
        return error_page("This sign-in request has expired. Start again from the application.")
    return sid, session, pending


async def checked_form(
    ctx: AuthContext, request: Request, step: str
) -> tuple[str, dict[str, Any], str, dict[str, Any], FormData] | Response:
    form = await _form(request)
    if form is None:
        return error_page("The form could not be read.")
    request_id = form_text(form, "request_id")
    checked = await checked_request(ctx, request, step, request_id, form_text(form, "csrf_token"))
    if isinstance(checked, Response):
        return checked
    sid, session, pending = checked
    return sid, session, request_id, pending, form


async def answer(
    ctx: AuthContext, sid: str, request_id: str, pending: dict[str, Any], params: dict[str, str]
) -> Response:
    """End the request and the session, and send the browser back to the client."""
    # The pending request is single use: a second submit finds nothing.
    if not await ctx.redis.delete(AUTH_REQUEST.format(id=request_id)):
        return error_page("This sign-in request was already answered.")
    return await end_session(ctx, sid, redirect_to_client(pending["redirect_uri"], params))


def refused(ctx: AuthContext, pending: dict[str, Any], description: str) -> dict[str, str]:
    return {"error": "access_denied", "error_description": description, **back_params(ctx, pending)}


async def signed_in(
    ctx: AuthContext, sid: str, username: str, request_id: str, pending: dict[str, Any]
) -> Response:
    """The consent page, in a new session bound to this request. A session id fixed
    before sign-in is worth nothing, and it lives no longer than the request does."""
    await ctx.redis.delete(SESSION.format(id=sid))
    new_sid = await new_session(
        ctx, {"username": username, "request_id": request_id}, ttl=AUTH_REQUEST_TTL
    )
    response = await consent_page(ctx, new_sid, username, request_id, pending)
    set_cookie(ctx, response, new_sid)
    return response
