"""The gateway's SDK middleware: upstream tools in `tools/list`, and `tools/call`
forwarded to their upstream (docs/gateway.md, "A forwarded call").

It runs inside `policy.ToolCallPolicy`, which has by then filtered the listing by the
caller's scopes, checked the permission again and started the `tool.called` record; the
guard before it authenticated, took the cost and answered 403 for a missing scope. Here,
in order: a held tool is refused; the arguments are checked against the pinned input
schema, so nothing invalid is ever sent upstream (JSON-RPC -32602, recorded by the
policy as `tool.invalid_params`); the call goes to the upstream (`link`); the result's
structured content is checked against the pinned output schema and credentials are
redacted from it (`results`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import ListToolsResult

from bastion_common.contracts import CLIENT_IP_SCOPE_KEY, PRINCIPAL_SCOPE_KEY
from bastion_common.tokens import Principal
from bastion_tools.gateway.errors import TOOL_HELD, UPSTREAM_MALFORMED, UpstreamCallError
from bastion_tools.gateway.registry import Gateway
from bastion_tools.gateway.results import output_problems, redacted
from bastion_tools.gateway.schemas import problems
from bastion_tools.guard.arguments import InvalidArguments

__all__ = ["GatewayForwarder"]


class GatewayForwarder:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method == "tools/list":
            return self._listed(await call_next(ctx))
        if ctx.method != "tools/call":
            return await call_next(ctx)
        params = ctx.params or {}
        name = params.get("name")
        gateway = self._gateway
        if not isinstance(name, str) or (name not in gateway.tools and name not in gateway.held):
            return await call_next(ctx)
        scope = getattr(ctx.request, "scope", None) or {}
        principal, ip = scope.get(PRINCIPAL_SCOPE_KEY), scope.get(CLIENT_IP_SCOPE_KEY)
        if not isinstance(principal, Principal):
            raise MCPError(code=-32001, message="not authenticated")
        held = gateway.held.get(name)
        if held is not None:
            gateway.record.refused_held(principal, ip, name, held.upstream)
            raise UpstreamCallError(
                TOOL_HELD,
                held.upstream,
                f"{name} is held: its definition changed (or it is new) since an admin"
                " approved this upstream's tools; an admin must approve it first",
                "held",
            )
        tool = gateway.tools[name]
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidArguments(name, [{"field": "arguments", "problem": "must be an object"}])
        found = problems(tool.arguments, arguments, "arguments")
        if found:
            raise InvalidArguments(name, found)  # before anything is sent upstream
        result = await gateway.call(tool.upstream, tool.upstream_tool, arguments, principal.subject)
        invalid = output_problems(tool, result)
        if invalid:
            fields = sorted({p["field"] for p in invalid})
            gateway.record.output_invalid(principal, ip, name, tool.upstream, fields)
            raise UpstreamCallError(
                UPSTREAM_MALFORMED,
                tool.upstream,
                f"the result of {name} does not match its pinned output schema"
                f" ({', '.join(fields)})",
                "output_invalid",
            )
        if gateway.policy.mcp_servers[tool.upstream].redact:
            result, kinds = redacted(result)
            if kinds:
                gateway.record.output_redacted(principal, ip, name, tool.upstream, kinds)
        return result

    def _listed(self, result: HandlerResult) -> HandlerResult:
        extra = [tool.listed for tool in self._gateway.tools.values()]
        if not extra:
            return result
        if isinstance(result, ListToolsResult):
            return result.model_copy(update={"tools": [*result.tools, *extra]})
        if isinstance(result, Mapping) and isinstance(result.get("tools"), list):
            wire = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in extra]
            return {**result, "tools": [*result["tools"], *wire]}
        return result
