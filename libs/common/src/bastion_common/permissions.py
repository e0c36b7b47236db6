"""Roles, permissions and the scopes each resource offers.

See docs/architecture.md, "Roles and permissions".

OAuth scopes are the permission strings. A token's scopes are what the client asked
for, cut to what the user's roles allow and what the resource offers (`grantable`).
The roles come from the policy file (`bastion_common.policyroles`); a file without
`roles:` (or no file) gives `DEFAULT_ROLES`, the built-in roles below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

__all__ = [
    "BUILTIN_PERMISSIONS",
    "DEFAULT_RATE_LIMITS",
    "DEFAULT_ROLES",
    "ROLES",
    "ROLE_PERMISSIONS",
    "BuiltinPermission",
    "RoleTable",
    "grantable",
    "parse_scope",
]

# The permissions the built-in tools need (docs/architecture.md, "Tools").
BuiltinPermission = Literal[
    "weather:read",
    "weather:write",
    "files:read",
    "files:write",
    "files:delete",
    "admin:users",
    "metrics:view",
]

BUILTIN_PERMISSIONS: Final[frozenset[str]] = frozenset(get_args(BuiltinPermission))
ROLES: Final[tuple[str, ...]] = ("guest", "user", "premium", "admin")

ROLE_PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "guest": frozenset({"weather:read"}),
    "user": frozenset({"weather:read", "files:read"}),
    "premium": frozenset({"weather:read", "weather:write", "files:read", "files:write"}),
    "admin": BUILTIN_PERMISSIONS,
}

# Token bucket per role: (capacity, refill per second).
DEFAULT_RATE_LIMITS: Final[dict[str, tuple[int, float]]] = {
    "guest": (50, 1.0),
    "user": (200, 5.0),
    "premium": (1000, 20.0),
    "admin": (5000, 100.0),
}


@dataclass(frozen=True)
class RoleTable:
    """What each role may do, and every permission something offers.

    `offered` is every permission a tool of this deployment needs: the built-in tools'
    and each upstream's (`<prefix>:read`, `<prefix>:write`, per-tool). The tools and keys
    resources offer all of it; auth grants a role's permissions only from it.
    `warnings` are the policy file's lines about permissions no role holds."""

    permissions: Mapping[str, frozenset[str]]
    rate_limits: Mapping[str, tuple[int, float]]
    offered: frozenset[str]
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.permissions)

    def permissions_for(self, roles: Iterable[str]) -> frozenset[str]:
        """Union of the permissions of `roles`; unknown role names grant nothing."""
        out: set[str] = set()
        for role in roles:
            out |= self.permissions.get(role, frozenset())
        return frozenset(out)

    def as_json_table(self) -> dict[str, list[str]]:
        """{role: sorted permissions}: the table as auth's Lua reads it."""
        return {role: sorted(perms) for role, perms in self.permissions.items()}


DEFAULT_ROLES: Final[RoleTable] = RoleTable(
    permissions=ROLE_PERMISSIONS, rate_limits=DEFAULT_RATE_LIMITS, offered=BUILTIN_PERMISSIONS
)


def parse_scope(scope: str | None) -> frozenset[str]:
    """The set of scope tokens in a space-separated OAuth scope string (RFC 6749 §3.3)."""
    return frozenset(scope.split()) if scope else frozenset()


def grantable(
    requested: Iterable[str], allowed: Iterable[str], offered: Iterable[str]
) -> list[str]:
    """Requested scopes cut to what the principal holds and the resource offers, sorted."""
    return sorted(set(requested) & set(allowed) & set(offered))
