"""Resource indicators (RFC 8707) and the scopes granted for one resource (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Iterable

from bastion_auth.errors import OAuthError
from bastion_auth.settings import Settings
from bastion_common.permissions import grantable, parse_scope

__all__ = ["check_resource", "grant_scopes"]


def check_resource(settings: Settings, values: list[str]) -> str:
    """The one resource of a request. RFC 8707 §2: absent, repeated or unknown is an error
    (`invalid_target`); the match is exact, no normalisation that could widen it."""
    if not values:
        raise OAuthError("invalid_target", "resource is required (RFC 8707)")
    if len(values) != 1:
        raise OAuthError("invalid_target", "exactly one resource per request")
    resource = values[0]
    if resource not in settings.resources:
        raise OAuthError("invalid_target", "resource is not served by this authorization server")
    return resource


def grant_scopes(
    settings: Settings,
    resource: str,
    requested: str | None,
    *,
    roles: Iterable[str] | None = None,
    allowed: Iterable[str] | None = None,
) -> list[str]:
    """Requested scopes cut to what the principal holds and the resource offers; no scope
    asked means everything the principal may have at that resource. Asking for more is
    not an error: the token says what was granted."""
    offered = settings.resources[resource]
    held = set(allowed) if allowed is not None else set(settings.roles.permissions_for(roles or []))
    wanted = parse_scope(requested) if requested else offered
    return grantable(wanted, held, offered)
