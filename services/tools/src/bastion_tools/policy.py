"""The MCP half of the pipeline: a server middleware inside the SDK.

For `tools/list` it shows a caller only the tools its scopes allow. For `tools/call`
it checks the permission again (defence in depth: the guard already answered 403),
validates the arguments against the tool's schema before anything runs (unknown
fields too), answers invalid ones with JSON-RPC -32602 naming the fields (never echoing
the values) and records every call with its outcome, latency and redacted arguments.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, ListToolsResult
from prometheus_client import Histogram
from pydantic import ValidationError

from bastion_common.audit import Outcome
from bastion_common.http import LabelCache
from bastion_common.tokens import Principal
from bastion_tools.events import Auditor
from bastion_tools.tools.catalog import PRINCIPAL_SCOPE_KEY, ToolSpec

__all__ = ["ToolCallPolicy"]

TOOL_LATENCY = Histogram(
    "bastion_tools_call_seconds",
    "Tool call latency inside the server",
    ["tool", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


_LATENCY = LabelCache(TOOL_LATENCY)


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "arguments", "problem": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


class ToolCallPolicy:
    def __init__(self, catalog: dict[str, ToolSpec], auditor: Auditor) -> None:
        self._catalog = catalog
        self._auditor = auditor
        self._known = {
            name: frozenset(spec.tool.fn_metadata.arg_model.model_fields)
            for name, spec in catalog.items()
        }

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method not in ("tools/list", "tools/call"):
            return await call_next(ctx)
        scope = getattr(ctx.request, "scope", None) or {}
        principal = scope.get(PRINCIPAL_SCOPE_KEY)
        if not isinstance(principal, Principal):
            raise MCPError(code=-32001, message="not authenticated")
        ip = scope.get("bastion.ip")
        if ctx.method == "tools/list":
            return self._filtered(await call_next(ctx), principal)
        return await self._call(ctx, call_next, principal, ip)

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
        spec = self._catalog.get(name) if isinstance(name, str) else None
        if spec is None:
            return await call_next(ctx)  # the SDK answers "unknown tool"
        if spec.permission not in principal.scopes:
            self._auditor.emit("authz.denied", "denied", principal=principal, ip=ip, tool=spec.name,
                               required=[spec.permission])  # fmt: skip
            raise MCPError(code=-32003, message=f"this call needs {spec.permission}")
        self._validate(spec, arguments, principal, ip)
        started = time.perf_counter()
        outcome: Outcome = "error"
        try:
            result = await call_next(ctx)
            is_error = (
                result.is_error
                if isinstance(result, CallToolResult)
                else bool(isinstance(result, Mapping) and result.get("isError"))
            )
            outcome = "error" if is_error else "success"
            return result
        finally:
            elapsed = time.perf_counter() - started
            _LATENCY(spec.name, outcome).observe(elapsed)
            self._auditor.emit(
                "tool.called", outcome, principal=principal, ip=ip, tool=spec.name,
                arguments=arguments, latency_ms=round(elapsed * 1000, 3),
            )  # fmt: skip

    def _validate(
        self, spec: ToolSpec, arguments: Any, principal: Principal, ip: str | None
    ) -> None:
        problems: list[dict[str, str]] = []
        if not isinstance(arguments, dict):
            problems = [{"field": "arguments", "problem": "must be an object"}]
        else:
            known = self._known[spec.name]
            problems = [
                {"field": str(key)[:64], "problem": "unknown argument"}
                for key in arguments
                if key not in known
            ]
            if not problems:
                try:
                    spec.tool.fn_metadata.validate_arguments(arguments)
                except ValidationError as exc:
                    problems = _field_errors(exc)
        if problems:
            fields = sorted({p["field"] for p in problems})
            self._auditor.emit(
                "tool.invalid_params", "failure", principal=principal, ip=ip, tool=spec.name,
                arguments=arguments if isinstance(arguments, dict) else None, fields=fields,
            )  # fmt: skip
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"invalid arguments for {spec.name}: "
                + "; ".join(f"{p['field']}: {p['problem']}" for p in problems),
                data={"tool": spec.name, "errors": problems},
            )
