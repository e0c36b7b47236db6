"""The MCP half of the pipeline: a server middleware inside the SDK.

For `tools/list` it shows a caller only the tools its scopes allow. For `tools/call`
it checks the permission again (defence in depth: the guard already answered 403) and
records every call with its outcome, latency and redacted arguments. Arguments are
checked once, by the tool's own `CheckedArguments` inside the SDK, before the tool runs;
a call they fail is answered JSON-RPC -32602 naming the fields (never echoing the values)
and recorded here as `tool.invalid_params`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, ListToolsResult
from prometheus_client import Histogram

from bastion_common.audit import Outcome
from bastion_common.contracts import CLIENT_IP_SCOPE_KEY, PRINCIPAL_SCOPE_KEY
from bastion_common.tokens import Principal
from bastion_tools.events import Auditor
from bastion_tools.tools.catalog import InvalidArguments, ToolSpec

__all__ = ["ToolCallPolicy"]

TOOL_LATENCY = Histogram(
    "bastion_tools_call_seconds",
    "Tool call latency inside the server",
    ["tool", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class ToolCallPolicy:
    def __init__(self, catalog: dict[str, ToolSpec], auditor: Auditor) -> None:
        self._catalog = catalog
        self._auditor = auditor

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        # One coroutine for the whole of a tool call (no helper coroutine): every call
        # passes here, and each coroutine level is paid again whenever the call resumes.
        method = ctx.method
        if method != "tools/call" and method != "tools/list":
            return await call_next(ctx)
        scope = getattr(ctx.request, "scope", None) or {}
        principal = scope.get(PRINCIPAL_SCOPE_KEY)
        if not isinstance(principal, Principal):
            raise MCPError(code=-32001, message="not authenticated")
        if method == "tools/list":
            return self._filtered(await call_next(ctx), principal)
        ip = scope.get(CLIENT_IP_SCOPE_KEY)
        params = ctx.params or {}
        name = params.get("name")
        arguments = params.get("arguments") or {}
        spec = self._catalog.get(name) if isinstance(name, str) else None
        if spec is None:
            return await call_next(ctx)  # the SDK answers "unknown tool"
        if spec.permission not in principal.scopes:
            self._auditor.emit("authz.denied", "denied", principal=principal, ip=ip, tool=spec.name,
                               required=[spec.permission])  # fmt: skip
            raise MCPError(code=-32003, message=f"this call needs {spec.permission}")
        started = time.perf_counter()
        outcome: Outcome = "error"
        ran = True  # False when the arguments were refused: the tool never ran
        try:
            if not isinstance(arguments, dict):
                raise InvalidArguments(
                    spec.name, [{"field": "arguments", "problem": "must be an object"}]
                )
            result = await call_next(ctx)
            # The SDK hands back the wire dict; the ABC check for Mapping is slow.
            is_error = (
                bool(result.get("isError"))
                if type(result) is dict
                else result.is_error
                if isinstance(result, CallToolResult)
                else bool(isinstance(result, Mapping) and result.get("isError"))
            )  # fmt: skip
            outcome = "error" if is_error else "success"
            return result
        except InvalidArguments as invalid:
            ran = False
            self._auditor.emit(
                "tool.invalid_params", "failure", principal=principal, ip=ip, tool=spec.name,
                arguments=arguments if isinstance(arguments, dict) else None,
                fields=invalid.fields,
            )  # fmt: skip
            raise
        finally:
            if ran:
                elapsed = time.perf_counter() - started
                TOOL_LATENCY.labels(spec.name, outcome).observe(elapsed)
                self._auditor.emit(
                    "tool.called", outcome, principal=principal, ip=ip, tool=spec.name,
                    arguments=arguments, latency_ms=round(elapsed * 1000, 3),
                )  # fmt: skip

    def _filtered(self, result: HandlerResult, principal: Principal) -> HandlerResult:
        def allowed(name: str) -> bool:
            spec = self._catalog.get(name)
            return spec is not None and spec.permission in principal.scopes

        if isinstance(result, ListToolsResult):
            return result.model_copy(update={"tools": [t for t in result.tools if allowed(t.name)]})
        if isinstance(result, Mapping) and isinstance(result.get("tools"), list):
            tools = [
                t for t in result["tools"] if isinstance(t, Mapping) and allowed(str(t.get("name")))
            ]
            return {**result, "tools": tools}
        return result
