"""Token exchange (RFC 8693) for the gateway: a caller's access token, traded for one
bound to an upstream MCP server that trusts this authorization server.

The gateway never passes the caller's token on (MCP security best practices, "token
passthrough"); for an upstream configured in AUTH_TOKEN_EXCHANGE_AUDIENCES it asks here
for a token of the upstream's own, which says who the caller is and who acts for them:

- only the gateway's client (`bastion-tools`, a confidential client) may exchange, and
  only a token that was issued to the gateway (`aud` = the tools resource): a stolen
  token for another resource cannot be laundered into an upstream's;
- the subject token must be an access token issued here that is still good: not
  expired, not revoked, its person not signed out, disabled or demoted since
  (`TokenService.refusal`, the same answer introspection gives);
- the audience (RFC 8707 `resource`, or RFC 8693 `audience`; both must agree) must be
  configured for exchange; the tools, keys, audit and admin resources are not;
- scopes are what was asked (default: all) within what the subject token holds and the
  audience offers; asking beyond either is `invalid_scope`, never a silent widening;
- the new token's `sub` and `roles` are the caller's, `client_id` is the gateway's and
  `act` names the gateway (§4.1), wrapping any `act` the subject token carried (the
  delegation chain); it ends no later than the subject token;
- no actor token (the authenticated client is the actor), only access tokens asked for,
  and no refresh token: the gateway exchanges again when it needs to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bastion_auth.clients import SERVICE_CLIENT, Client
from bastion_auth.deps import AuthContext
from bastion_auth.errors import OAuthError
from bastion_auth.settings import Settings
from bastion_auth.tokens import TokenService, token_response
from bastion_common.permissions import parse_scope

__all__ = ["ACCESS_TOKEN_TYPE", "TOKEN_EXCHANGE", "Exchange", "check_exchange", "exchange_token"]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN


@dataclass(frozen=True)
class Exchange:
    """What the exchange may issue: for whom, where, what, on whose behalf, until when."""

    subject: str
    roles: list[str]
    resource: str
    scopes: list[str]
    act: dict[str, Any]
    expires_at: int
    subject_jti: str


def _target(settings: Settings, form: dict[str, str], resources: list[str]) -> str:
    values = set(resources) | ({form["audience"]} if form.get("audience") else set())
    if len(values) != 1:
        raise OAuthError("invalid_target", "name exactly one audience (resource or audience)")
    (target,) = values
    if target not in settings.exchange_audiences:
        raise OAuthError("invalid_target", "that audience is not configured for token exchange")
    return target


async def check_exchange(
    settings: Settings,
    tokens: TokenService,
    client: Client,
    form: dict[str, str],
    resources: list[str],
) -> Exchange:
    """The exchange this request may make, or the OAuthError that refuses it."""
    if client.client_id != SERVICE_CLIENT or not client.confidential:
        raise OAuthError("unauthorized_client", "only the gateway's client may exchange tokens")
    if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
        raise OAuthError("invalid_request", f"subject_token_type must be {ACCESS_TOKEN_TYPE}")
    if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
        raise OAuthError("invalid_request", "only access tokens are issued by exchange")
    if "actor_token" in form or "actor_token_type" in form:
        raise OAuthError("invalid_request", "no actor token: the authenticated client acts")
    target = _target(settings, form, resources)
    record = await tokens.access_record(form.get("subject_token", ""))
    now = time.time()
    if record is None or record["exp"] <= now:
        raise OAuthError("invalid_grant", "subject_token is not an access token issued here")
    if record["aud"] != settings.tools_resource.rstrip("/"):
        raise OAuthError("invalid_grant", "subject_token was not issued to the gateway")
    refusal = await tokens.refusal(record)
    if refusal is not None:
        raise OAuthError("invalid_grant", f"subject_token is no longer good: {refusal}")
    held = parse_scope(record.get("scope"))
    offered = settings.exchange_audiences[target]
    wanted = parse_scope(form["scope"]) if form.get("scope") else held & offered
    if wanted - held:
        beyond = " ".join(sorted(wanted - held))
        raise OAuthError("invalid_scope", f"beyond what the subject token holds: {beyond}")
    if wanted - offered:
        unknown = " ".join(sorted(wanted - offered))
        raise OAuthError("invalid_scope", f"not offered by that audience: {unknown}")
    if not wanted:
        raise OAuthError("invalid_scope", "the subject token holds nothing that audience offers")
    act: dict[str, Any] = {"sub": client.client_id}
    if isinstance(record.get("act"), dict):
        act["act"] = record["act"]
    expires_at = min(int(record["exp"]), int(now) + settings.token_exchange_ttl)
    if expires_at - int(now) < 1:
        raise OAuthError("invalid_grant", "subject_token expires within the second")
    return Exchange(
        subject=record["sub"],
        roles=list(record.get("roles") or []),
        resource=target,
        scopes=sorted(wanted),
        act=act,
        expires_at=expires_at,
        subject_jti=str(record["jti"]),
    )


async def exchange_token(
    ctx: AuthContext, client: Client, form: dict[str, str], resources: list[str], ip: str
) -> dict[str, Any]:
    """The token response of an exchange, or the OAuthError that refuses it."""
    exchange = await check_exchange(ctx.settings, ctx.tokens, client, form, resources)
    access, claims = await ctx.tokens.access_token(
        sub=exchange.subject,
        client_id=client.client_id,
        resource=exchange.resource,
        scopes=exchange.scopes,
        roles=exchange.roles,
        ttl=exchange.expires_at - int(time.time()),
        act=exchange.act,
    )
    ctx.event(
        "token.issued",
        principal=exchange.subject,
        client_id=client.client_id,
        ip=ip,
        grant_type=TOKEN_EXCHANGE,
        aud=exchange.resource,
        scope=claims["scope"],
        act=exchange.act,
        subject_jti=exchange.subject_jti,
    )
    return token_response(access, claims, issued_token_type=ACCESS_TOKEN_TYPE)
