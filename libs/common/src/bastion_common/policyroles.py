"""The policy file's `roles:` section: what each role may do, and how fast.

```yaml
roles:
  guest: {permissions: [weather:read], rate_limit: {capacity: 50, refill_per_second: 1}}
  timekeeper: {permissions: [weather:read, time:read]}
```

A file without `roles:` gets the built-in roles (`permissions.DEFAULT_ROLES`), exactly
as before the section existed. A file with it defines every role there is: the four
built-in roles exist only if it lists them. A permission is real when something offers
it: a built-in tool, or an upstream (its `<prefix>:read` / `<prefix>:write` defaults, or
a permission a tool rule names). A role naming a permission nothing offers stops the
file (a typo would otherwise grant nothing, silently); an upstream permission no role
holds is only a warning (its tools are refused to everyone: fail closed), so a file
written before `roles:` keeps working unchanged (docs/gateway.md, "Roles").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Protocol

from pydantic import BaseModel, ConfigDict, Field

from bastion_common.permissions import BUILTIN_PERMISSIONS, DEFAULT_ROLES, RoleTable

__all__ = [
    "DEFAULT_RATE_LIMIT",
    "PERMISSION_PATTERN",
    "Permission",
    "ROLE_PATTERN",
    "RateLimitPolicy",
    "RolePolicy",
    "UpstreamPermissionSource",
    "role_table",
    "upstream_permissions",
]

PERMISSION_PATTERN = r"^[a-z][a-z0-9_-]*:[a-z][a-z0-9_-]*$"
ROLE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
Permission = Annotated[str, Field(pattern=PERMISSION_PATTERN, max_length=64)]
RoleName = Annotated[str, Field(pattern=ROLE_PATTERN)]


class RateLimitPolicy(BaseModel):
    """A role's token bucket: `capacity` calls, refilled at `refill_per_second`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    capacity: int = Field(ge=1, le=1_000_000)
    refill_per_second: float = Field(gt=0, le=100_000)


# The smallest built-in bucket (guest's): a role that names none gets it.
DEFAULT_RATE_LIMIT = RateLimitPolicy(capacity=50, refill_per_second=1.0)


class RolePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    permissions: list[Permission] = Field(max_length=256)
    rate_limit: RateLimitPolicy = DEFAULT_RATE_LIMIT


class _Tool(Protocol):
    @property
    def permission(self) -> str | None: ...

    @property
    def deny(self) -> bool: ...


class _Defaults(Protocol):
    @property
    def read(self) -> str | None: ...

    @property
    def write(self) -> str | None: ...


class UpstreamPermissionSource(Protocol):
    """What this module reads of an upstream (`policyfile.UpstreamPolicy` is one)."""

    @property
    def permissions(self) -> _Defaults: ...

    @property
    def tools(self) -> Mapping[str, _Tool]: ...


def upstream_permissions(prefix: str, upstream: UpstreamPermissionSource) -> dict[str, str]:
    """Permission -> the place in the file that makes the upstream offer it."""
    out = {
        upstream.permissions.read or f"{prefix}:read": "permissions.read",
        upstream.permissions.write or f"{prefix}:write": "permissions.write",
    }
    for name, tool in upstream.tools.items():
        if tool.permission is not None and not tool.deny:
            out.setdefault(tool.permission, f"tools.{name}.permission")
    return out


def role_table(
    roles: Mapping[str, RolePolicy] | None,
    upstreams: Mapping[str, tuple[str, UpstreamPermissionSource]],
    *,
    source: str = "policy",
) -> tuple[RoleTable, list[str]]:
    """The role table the file defines, and its problems (one line each, naming the place).

    `upstreams` maps each mcpServers name to (prefix, upstream)."""
    places: dict[str, list[str]] = {}
    for name, (prefix, upstream) in upstreams.items():
        for permission, where in upstream_permissions(prefix, upstream).items():
            places.setdefault(permission, []).append(f"mcpServers.{name}.{where}")
    offered = BUILTIN_PERMISSIONS | frozenset(places)
    if roles is None:
        table = DEFAULT_ROLES
        permissions, limits = table.permissions, table.rate_limits
    else:
        permissions = {r: frozenset(p.permissions) for r, p in roles.items()}
        limits = {
            r: (p.rate_limit.capacity, p.rate_limit.refill_per_second) for r, p in roles.items()
        }
    problems = [
        f"{source}: roles.{role}.permissions: {permission} is offered by nothing (neither a"
        " built-in tool nor an upstream)"
        for role, held in permissions.items()
        for permission in sorted(held - offered)
    ]
    held_by_some = frozenset().union(*permissions.values()) if permissions else frozenset()
    warnings = tuple(
        f"{source}: {place}: no role holds {permission}: its tools are refused to everyone"
        for permission, where in sorted(places.items())
        if permission not in held_by_some
        for place in where
    )
    table = RoleTable(
        permissions=dict(permissions),
        rate_limits=dict(limits),
        offered=offered,
        warnings=warnings,
    )
    return table, problems
