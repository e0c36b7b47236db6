"""Routes of a sign-in through an identity provider (the protocol: `federation`; the
pages and the session: `signin`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from bastion_auth.deps import AuthContext, Ctx, client_ip
from bastion_auth.linking import FederationError
from bastion_auth.pages import security_headers
from bastion_auth.signin import (
    browser_session,
    checked_request,
    error_page,
    login_page,
    pending_request,
    signed_in,
)

__all__ = ["router"]

router = APIRouter()


@router.get("/federated/start", include_in_schema=False)
async def federated_start(request: Request, ctx: Ctx) -> Response:
    """The login page's "Sign in with <provider>" link (a link, not a form, so the page's
    form-action need not name every provider), checked like a form."""
    query = request.query_params
    request_id = query.get("request_id", "")[:128]
    checked = await checked_request(
        ctx, request, "federated_start", request_id, query.get("csrf_token", "")
    )
    if isinstance(checked, Response):
        return checked
    sid, _session, pending = checked
    provider = ctx.federation.get(query.get("provider", ""))
    if provider is None:
        return login_page(
            ctx, sid, request_id, pending, error="Unknown sign-in method.", status=400
        )
    try:
        target = await ctx.federation.begin(provider.id, sid, request_id)
    except FederationError as exc:
        return _federation_failed(ctx, request, sid, request_id, pending, provider.id, exc)
    return RedirectResponse(target, status_code=303, headers=security_headers())


@router.get("/federated/callback", include_in_schema=False)
async def federated_callback(request: Request, ctx: Ctx) -> Response:
    return await _callback(request, ctx, None)


@router.get("/federated/callback/{provider_id}", include_in_schema=False)
async def federated_provider_callback(request: Request, ctx: Ctx, provider_id: str) -> Response:
    """The redirect URI of a provider that does not name itself in its answer (GitHub)."""
    return await _callback(request, ctx, provider_id[:64])


async def _callback(request: Request, ctx: Ctx, path_provider: str | None) -> Response:
    query = request.query_params
    sid, _ = await browser_session(ctx, request)
    record = await ctx.federation.take_state(query.get("state", ""), sid)
    if record is None or sid is None:
        ctx.event(
            "auth.login",
            "denied",
            ip=client_ip(request),
            method="oidc",
            reason="unknown, used or foreign state",
        )
        return error_page("This sign-in has expired or was started elsewhere. Start again.")
    request_id, provider_id = record["request_id"], record["provider"]
    pending = await pending_request(ctx, request_id)
    if pending is None:
        return error_page("This sign-in request has expired. Start again from the application.")
    provider = ctx.federation.get(provider_id)
    name = provider.name if provider else provider_id
    try:
        # Mix-up defence first: an answer from another provider is not looked at further.
        await ctx.federation.check_answer(record, query.get("iss"), path_provider)
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
        method=ctx.federation.method(provider_id),
        provider=provider_id,
        roles=identity.roles,
    )
    return await signed_in(ctx, sid, identity.username, request_id, pending)


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
        method=ctx.federation.method(provider_id),
        provider=provider_id,
        reason=exc.reason,
    )
    status = 503 if exc.unavailable else 401
    return login_page(ctx, sid, request_id, pending, error=exc.message, status=status)
