"""Roles, permissions and the scopes each resource offers.

See docs/architecture.md, "Roles and permissions".

OAuth scopes are the permission strings. A token's scopes are what the client asked
for, cut to what the user's roles allow and what the resource offers (`grantable`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, get_args

__all__ = [
    "ALL_PERMISSIONS",
    "DEFAULT_RATE_LIMITS",
    "ROLE_PERMISSIONS",
    "Permission",
    "ROLES",
    "Role",
    "grantable",
    "parse_scope",
    "permissions_for_roles",
]

Permission = Literal[
    "weather:read",
    "weather:write",
    "files:read",
    "files:write",
    "files:delete",
    "admin:users",
    "metrics:view",
]
Role = Literal["guest", "user", "premium", "admin"]

ALL_PERMISSIONS: Final[frozenset[str]] = frozenset(get_args(Permission))
ROLES: Final[tuple[str, ...]] = get_args(Role)

ROLE_PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "guest": frozenset({"weather:read"}),
    "user": frozenset({"weather:read", "files:read"}),
    "premium": frozenset({"weather:read", "weather:write", "files:read", "files:write"}),
    "admin": ALL_PERMISSIONS,
}

# Token bucket per role: (capacity, refill per second).
DEFAULT_RATE_LIMITS: Final[dict[str, tuple[int, float]]] = {
    "guest": (50, 1.0),
    "user": (200, 5.0),
    "premium": (1000, 20.0),
    "admin": (5000, 100.0),
}


def permissions_for_roles(roles: Iterable[str]) -> frozenset[str]:
    """Union of the permissions of `roles`; unknown role names grant nothing."""
    out: set[str] = set()
    for role in roles:
        out |= ROLE_PERMISSIONS.get(role, frozenset())
    return frozenset(out)


def parse_scope(scope: str | None) -> frozenset[str]:
    """The set of scope tokens in a space-separated OAuth scope string (RFC 6749 §3.3)."""
    return frozenset(scope.split()) if scope else frozenset()


def grantable(
    requested: Iterable[str], allowed: Iterable[str], offered: Iterable[str]
) -> list[str]:
    """Requested scopes cut to what the principal holds and the resource offers, sorted."""
    return sorted(set(requested) & set(allowed) & set(offered))
