"""The tool catalogue: each tool with its permission, cost, argument schema and annotations.

Argument schemas are the tools' signatures (pydantic `Annotated` types with bounds); the
SDK turns them into the advertised JSON Schema and validates every call against the same
model right before the tool runs, once; `guard.arguments.CheckedArguments` makes that
check strict (unknown arguments refused, problems named by field, never by value).
Annotations tell clients the truth: readers are `readOnlyHint`, `write_file` and
`delete_file` are `destructiveHint`.

This module deliberately has no `from __future__ import annotations`: the SDK reads the
signatures at registration, and the argument types are built from settings here.
"""

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations
from pydantic import AfterValidator, Field, StringConstraints

from bastion_common.contracts import PRINCIPAL_SCOPE_KEY
from bastion_common.logging import get_logger
from bastion_common.tokens import Principal
from bastion_tools.guard.arguments import CheckedArguments
from bastion_tools.tools.sandbox import Sandbox, SandboxError, check_relative_path
from bastion_tools.tools.weather import WeatherStore
from bastion_tools.upstream import Upstream, UpstreamError

__all__ = [
    "ToolDeps",
    "ToolSpec",
    "build_catalog",
    "principal_of",
]

log = get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    permission: str
    cost: int
    tool: Tool


@dataclass(frozen=True)
class ToolDeps:
    weather: WeatherStore
    sandbox: Sandbox
    upstream: Upstream
    auth_url: str
    admin_resource: str
    audit_url: str
    audit_resource: str


def principal_of(ctx: Context) -> Principal:
    """The principal the guard authenticated for this HTTP request (set in the ASGI scope).

    Only tools that use the principal take a `ctx`: `policy.ToolCallPolicy` refuses
    every `tools/call` that arrives without one before any tool runs."""
    request = ctx.request_context.request
    principal = getattr(request, "scope", {}).get(PRINCIPAL_SCOPE_KEY)
    if not isinstance(principal, Principal):
        # Cannot happen behind the guard; refuse rather than run unauthenticated.
        raise ToolError("not authenticated")
    return principal


def _guarded(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Expected failures become a clear tool error; anything else an opaque one, no trace."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (SandboxError, UpstreamError) as exc:
            raise ToolError(str(exc)) from None
        except ToolError:
            raise
        except Exception as exc:
            log.error("tool.crashed", tool=fn.__name__, error=type(exc).__name__)
            raise ToolError("internal error") from None

    return wrapper


READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                            open_world_hint=False)  # fmt: skip


def build_catalog(
    deps: ToolDeps, *, extensions: frozenset[str], costs: dict[str, int], max_bytes: int
) -> dict[str, ToolSpec]:
    def file_path(value: str) -> str:
        return check_relative_path(value, extensions=extensions)

    def dir_path(value: str) -> str:
        return check_relative_path(value, extensions=None, allow_root=True)

    City = Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\W\d_][\w .'-]*$"
        ),  # fmt: skip
        Field(description="city name, letters first (e.g. 'Paris')"),
    ]
    Temperature = Annotated[
        float, Field(ge=-90, le=60, allow_inf_nan=False, description="degrees Celsius")
    ]
    Condition = Literal[
        "clear", "sunny", "cloudy", "overcast", "rain", "drizzle", "snow", "sleet", "fog",
        "storm", "windy",
    ]  # fmt: skip
    kinds = ", ".join(sorted(extensions))
    FilePath = Annotated[
        str,
        Field(min_length=1, max_length=255, description=f"path under the sandbox root ({kinds})"),
        AfterValidator(file_path),
    ]
    DirPath = Annotated[
        str,
        Field(max_length=255, description="directory under the sandbox root ('.' is the root)"),
        AfterValidator(dir_path),
    ]
    Content = Annotated[
        str,
        Field(max_length=max_bytes, description=f"UTF-8 text, at most {max_bytes} bytes"),
        AfterValidator(lambda v: _within_bytes(v, max_bytes)),
    ]
    TimeRange = Literal["1h", "24h", "7d"]

    @_guarded
    async def get_weather(city: City) -> dict[str, Any]:
        """Latest stored weather observation for a city."""
        observation = await deps.weather.latest(city)
        return {"city": city, "observation": observation}

    @_guarded
    async def report_weather(
        city: City,
        temperature_c: Temperature,
        condition: Condition,
        ctx: Context,
    ) -> dict[str, Any]:
        """Store a weather observation for a city (it becomes the latest)."""
        principal = principal_of(ctx)
        return await deps.weather.report(city, temperature_c, condition, principal.subject)

    @_guarded
    async def list_files(directory: DirPath = ".") -> dict[str, Any]:
        """List files and directories inside the sandbox."""
        entries = await anyio.to_thread.run_sync(deps.sandbox.list, directory)
        return {"directory": directory or ".", "entries": entries}

    @_guarded
    async def read_file(path: FilePath) -> dict[str, Any]:
        """Read a text file inside the sandbox."""
        content = await anyio.to_thread.run_sync(deps.sandbox.read, path)
        return {"path": path, "content": content}

    @_guarded
    async def write_file(path: FilePath, content: Content) -> dict[str, Any]:
        """Write a text file inside the sandbox (replaces an existing file atomically)."""
        return await anyio.to_thread.run_sync(deps.sandbox.write, path, content)

    @_guarded
    async def delete_file(path: FilePath) -> dict[str, Any]:
        """Delete a file inside the sandbox."""
        return await anyio.to_thread.run_sync(deps.sandbox.delete, path)

    @_guarded
    async def list_users() -> dict[str, Any]:
        """Users and their roles, from the authorization server."""
        body = await deps.upstream.request(
            "GET", f"{deps.auth_url}/admin/users", resource=deps.admin_resource,
            scope="admin:users", name="auth",
        )  # fmt: skip
        raw = body.get("users", body) if isinstance(body, dict) else body
        if not isinstance(raw, list):
            raise UpstreamError("the auth service sent an unexpected answer")
        users = [
            {k: u.get(k) for k in ("username", "roles", "disabled") if k in u}
            for u in raw
            if isinstance(u, dict)
        ]
        return {"users": users}

    @_guarded
    async def get_security_audit(time_range: TimeRange) -> dict[str, Any]:
        """The security report of the audit service for the last 1h, 24h or 7d."""
        report = await deps.upstream.request(
            "GET", f"{deps.audit_url}/v1/report", resource=deps.audit_resource,
            scope="metrics:view", name="audit", params={"range": time_range},
        )  # fmt: skip
        return {"time_range": time_range, "report": report}

    writes = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                             open_world_hint=False)  # fmt: skip
    destructive = ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                  idempotent_hint=True, open_world_hint=False)  # fmt: skip
    table: list[tuple[Callable[..., Awaitable[Any]], str, ToolAnnotations]] = [
        (get_weather, "weather:read", READ_ONLY),
        (report_weather, "weather:write", writes),
        (list_files, "files:read", READ_ONLY),
        (read_file, "files:read", READ_ONLY),
        (write_file, "files:write", destructive),
        (delete_file, "files:delete", destructive),
        (list_users, "admin:users", READ_ONLY),
        (get_security_audit, "metrics:view", READ_ONLY),
    ]
    catalog: dict[str, ToolSpec] = {}
    for fn, permission, annotations in table:
        name = fn.__name__
        tool = Tool.from_function(fn, name=name, annotations=annotations)
        tool.fn_metadata = CheckedArguments.of(tool)
        catalog[name] = ToolSpec(name, permission, costs.get(name, 1), tool)
    return catalog


def _within_bytes(value: str, max_bytes: int) -> str:
    if len(value.encode("utf-8")) > max_bytes:
        raise ValueError(f"content must be at most {max_bytes} bytes of UTF-8")
    return value
