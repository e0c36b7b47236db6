"""Contracts between services, each with one owner: this module. Both sides import it.

A name written twice (a channel in `keys` and again in `tools`, a JSON path in `audit`
and a details key in `tools`) drifts apart silently; a name imported from here cannot.
See docs/architecture.md, "Contracts between services".
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel

__all__ = [
    "APIKEY_REVOKED_CHANNEL",
    "API_KEY_PREFIX",
    "ARGUMENT_PATH_JSON",
    "CLIENT_IP_SCOPE_KEY",
    "EVENT_TYPES",
    "PRINCIPAL_SCOPE_KEY",
    "TOKEN_REF_DETAILS",
    "EventType",
    "KeyIntrospection",
]

# --- keys -> tools -------------------------------------------------------------------

API_KEY_PREFIX: Final = "mcp_"
"""Every API key starts with this; a bearer value that does is checked with `keys`."""

APIKEY_REVOKED_CHANNEL: Final = "apikeys:revoked"
"""Redis pub/sub channel: `keys` publishes a revoked key's id, `tools` drops its cache."""


class KeyIntrospection(BaseModel):
    """The answer of `POST {keys}/v1/introspect` (`keys` writes it, `tools` reads it).

    `{"active": false}` for every refusal; the other fields only when active.
    `expires_at` is when the presented secret stops working."""

    active: bool
    key_id: str | None = None
    owner: str | None = None
    roles: list[str] | None = None
    permissions: list[str] | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None


# --- the guard -> what runs behind it (ASGI scope keys) -------------------------------

PRINCIPAL_SCOPE_KEY: Final = "bastion.principal"
"""ASGI scope key of the authenticated `bastion_common.tokens.Principal`."""

CLIENT_IP_SCOPE_KEY: Final = "bastion.ip"
"""ASGI scope key of the client address the guard judged the request by."""

# --- publishers -> the audit report ---------------------------------------------------

TOKEN_REF_DETAILS: Final = ("jti", "token_id")
"""Event `details` keys naming the token an event was made with (report: token_many_ips)."""

ARGUMENT_PATH_JSON: Final = "$.details.arguments.path"
"""Where a tool call's `path` argument sits in an event (report: file_exfiltration)."""

EventType = Literal[
    "service.started",
    "auth.login",
    "auth.logout",
    "auth.lockout",
    "auth.consent",
    "oauth.code_issued",
    "oauth.code_redeemed",
    "oauth.code_replayed",
    "oauth.request_failed",
    "token.issued",
    "token.refreshed",
    "token.refresh_refused",
    "token.refresh_reuse",
    "token.revoked",
    "client.registered",
    "signing_key.rotated",
    "user.created",
    "user.updated",
    "authn.failed",
    "authz.denied",
    "ratelimit.refused",
    "tool.called",
    "tool.invalid_params",
    "request.invalid",
    "tool.pinned",
    "tool.held",
    "tool.approved",
    "tool.definition_changed",
    "tool.definition_refused",
    "tool.output_redacted",
    "tool.output_invalid",
    "apikey.created",
    "apikey.rotated",
    "apikey.revoked",
    "apikey.exchanged",
    "apikey.presentation_failed",
]

# The event vocabulary and what each type means. Outcomes: success; failure (bad
# credentials or input); denied (refused by policy: scope, rate limit, lockout); error
# (the service could not do its part).
EVENT_TYPES: Final[dict[EventType, str]] = {
    "service.started": "a service finished starting",
    "auth.login": "a login attempt (principal = the account name tried, trimmed, lower case)",
    "auth.logout": "a person signed out on the consent page (not you? sign out)",
    "auth.lockout": "an account or client IP was locked after repeated failures",
    "auth.consent": "a user allowed (success) or refused (denied) a client",
    "oauth.code_issued": "an authorization code was issued",
    "oauth.code_redeemed": "an authorization code was exchanged for tokens",
    "oauth.code_replayed": "a used authorization code was presented again",
    "oauth.request_failed": "an authorize or token request was refused (error in details)",
    "token.issued": "an access (and refresh) token was issued",
    "token.refreshed": "a refresh token was rotated",
    "token.refresh_refused": "a refresh was refused because the identity provider no longer "
    "confirms the person (or could not be asked); the family was revoked",
    "token.refresh_reuse": "a rotated refresh token was used again; its family was revoked",
    "token.revoked": "a token (or all of a user's tokens) was revoked",
    "client.registered": "a client registered (DCR) or a metadata document was accepted",
    "signing_key.rotated": "a signing key was rotated",
    "user.created": "an admin created a user",
    "user.updated": "an admin changed a user's roles or disabled/enabled it",
    "authn.failed": "a bearer token or API key was refused (reason in details)",
    "authz.denied": "a call lacked the permission it needs",
    "ratelimit.refused": "a call was refused by a rate limit",
    "tool.called": "a tool ran (outcome success or error; latency and redacted args)",
    "tool.invalid_params": "a tool call was refused for invalid arguments",
    "request.invalid": "an MCP request was refused before any tool ran: not JSON, too large, "
    "too many messages, or a session that is unknown or belongs to another credential",
    "tool.pinned": "the gateway pinned an upstream tool's definition on first sight",
    "tool.held": "an upstream tool's definition changed, or a new tool appeared on a known "
    "upstream: it is held (not listed, calls refused) until an admin approves it",
    "tool.approved": "an admin approved a held upstream tool definition (digest in details)",
    "tool.definition_changed": "an upstream tool's definition changed and was re-pinned "
    "without approval (pinning mode auto)",
    "tool.definition_refused": "an upstream tool was not served: its schemas cannot be used",
    "tool.output_redacted": "credentials were removed from an upstream tool's result "
    "(their kinds and count in details, never the values)",
    "tool.output_invalid": "an upstream tool's result did not match its pinned output "
    "schema and was not passed on",
    "apikey.created": "an API key was created",
    "apikey.rotated": "an API key was rotated",
    "apikey.revoked": "an API key was revoked",
    "apikey.exchanged": "an API key was exchanged for an access token",
    "apikey.presentation_failed": "an unknown, expired, revoked or malformed key was presented",
}
