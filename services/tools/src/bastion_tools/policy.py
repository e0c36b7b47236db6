"""The MCP half of the pipeline: a server middleware inside the SDK.

For `tools/list` it shows a caller only the tools its scopes allow (`guard.rbac`); a
tool without a rule is never shown and never run. For `tools/call` it checks the
permission again (defence in depth: the guard already answered 403) and records every
call with its outcome, latency and redacted arguments. Arguments are checked once, by
the tool's own `guard.arguments.CheckedArguments` inside the SDK, before the tool runs;
a call they fail is answered JSON-RPC -32602 naming the fields (never echoing the
values) and recorded here as `tool.invalid_params`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, ListToolsResult, TextContent
from prometheus_client import Histogram

from bastion_common.audit import Outcome
from bastion_common.auditor import Auditor
from bastion_common.contracts import CLIENT_IP_SCOPE_KEY, PRINCIPAL_SCOPE_KEY
from bastion_common.tokens import Principal
from bastion_tools.guard.arguments import InvalidArguments
from bastion_tools.guard.rbac import ToolRule, visible_tools

__all__ = ["ToolCallPolicy"]

TOOL_LATENCY = Histogram(
    "bastion_tools_call_seconds",
    "Tool call latency inside the server",
    ["tool", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# One histogram per (tool, outcome), looked up once: `labels()` checks and locks on every
# call. Only tools with a rule get here, so the label sets are few.
_tool_latency = functools.lru_cache(maxsize=1024)(TOOL_LATENCY.labels)


class ToolCallPolicy:
    """`rules` maps each tool's name to its rule (`guard.rbac.ToolRule`)."""

    def __init__(self, rules: Mapping[str, ToolRule], auditor: Auditor) -> None:
        self._rules = rules
        self._auditor = auditor

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method not in ("tools/list", "tools/call"):
            return await call_next(ctx)
        scope = getattr(ctx.request, "scope", None) or {}
        principal = scope.get(PRINCIPAL_SCOPE_KEY)
        if not isinstance(principal, Principal):
            raise MCPError(code=-32001, message="not authenticated")
        if ctx.method == "tools/list":
            return self._filtered(await call_next(ctx), principal)
        return await self._call(ctx, call_next, principal, scope.get(CLIENT_IP_SCOPE_KEY))

    def _filtered(self, result: HandlerResult, principal: Principal) -> HandlerResult:
        if isinstance(result, ListToolsResult):
            tools = visible_tools(self._rules, result.tools, principal)
            return result.model_copy(update={"tools": tools})
        if isinstance(result, Mapping) and isinstance(result.get("tools"), list):
            return {**result, "tools": visible_tools(self._rules, result["tools"], principal)}
        return result

    async def _call(
        self,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
        principal: Principal,
        ip: str | None,
    ) -> HandlerResult:
        params = ctx.params or {}
        name = params.get("name")
        arguments = params.get("arguments") or {}
        rule = self._rules.get(name) if isinstance(name, str) else None
        if rule is None or not isinstance(name, str):
            # Deny by default: a tool without a rule is answered as one that does not
            # exist (the SDK's own answer), and never runs.
            return CallToolResult(
                content=[TextContent(type="text", text=f"Unknown tool: {name}")], is_error=True
            )
        if rule.permission not in principal.scopes:
            self._auditor.emit("authz.denied", "denied", principal=principal, ip=ip, tool=name,
                               required=[rule.permission])  # fmt: skip
            raise MCPError(code=-32003, message=f"this call needs {rule.permission}")
        started = time.perf_counter()
        outcome: Outcome = "error"
        ran = True  # False when the arguments were refused: the tool never ran
        try:
            if not isinstance(arguments, dict):
                raise InvalidArguments(
                    name, [{"field": "arguments", "problem": "must be an object"}]
                )
            result = await call_next(ctx)
            outcome = "error" if _is_error(result) else "success"
            return result
        except InvalidArguments as invalid:
            ran = False
            self._auditor.emit(
                "tool.invalid_params", "failure", principal=principal, ip=ip, tool=name,
                arguments=arguments if isinstance(arguments, dict) else None,
                fields=invalid.fields,
            )  # fmt: skip
            raise
        finally:
            if ran:
                elapsed = time.perf_counter() - started
                _tool_latency(name, outcome).observe(elapsed)
                # Gateway tools (`gateway.definitions.GatewayTool`) name their upstream.
                upstream = getattr(rule, "upstream", None)
                extra = {"upstream": upstream} if upstream is not None else {}
                self._auditor.emit(
                    "tool.called", outcome, principal=principal, ip=ip, tool=name,
                    arguments=arguments, latency_ms=round(elapsed * 1000, 3), **extra,
                )  # fmt: skip


def _is_error(result: HandlerResult) -> bool:
    """A tool result that reports an error (the SDK hands back the model or its wire dict)."""
    if isinstance(result, CallToolResult):
        return bool(result.is_error)
    return isinstance(result, Mapping) and bool(result.get("isError"))
