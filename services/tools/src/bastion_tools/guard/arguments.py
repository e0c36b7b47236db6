"""Argument checks: a tool's arguments checked once, strictly, before it runs.

The SDK validates every call against the model built from the tool's signature, right
before the tool runs (`Tool.run`). `CheckedArguments` makes that one check strict:
unknown arguments are refused too, and any problem is JSON-RPC -32602 naming the fields,
never their values (`InvalidArguments`, which `policy.ToolCallPolicy` records as
`tool.invalid_params`). `check_arguments(tools)` applies it to tools before they are registered.

No `from __future__ import annotations`: the SDK's FuncMetadata is a pydantic model.
"""

from collections.abc import Iterable
from typing import Any

from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from pydantic import ValidationError

__all__ = ["CheckedArguments", "InvalidArguments", "check_arguments"]


class InvalidArguments(MCPError):
    """JSON-RPC -32602 for a tool's arguments: each field at fault and what is wrong with
    it, never the value sent (it may be a secret, or file contents)."""

    def __init__(self, tool: str, problems: list[dict[str, str]]) -> None:
        self.fields = sorted({problem["field"] for problem in problems})
        super().__init__(
            code=INVALID_PARAMS,
            message=f"invalid arguments for {tool}: "
            + "; ".join(f"{p['field']}: {p['problem']}" for p in problems),
            data={"tool": tool, "errors": problems},
        )


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "arguments", "problem": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


class CheckedArguments(FuncMetadata):
    """The SDK's argument check for one tool, made strict. The SDK runs it once per call,
    right before the tool (`Tool.run`), and passes an `MCPError` through as the call's
    JSON-RPC error; its own answer to bad arguments would be a tool result quoting
    pydantic's text, values included."""

    tool_name: str
    known_arguments: frozenset[str]

    @classmethod
    def of(cls, tool: Tool) -> "CheckedArguments":
        sdk = tool.fn_metadata
        return cls(
            arg_model=sdk.arg_model,
            output_schema=sdk.output_schema,
            output_model=sdk.output_model,
            wrap_output=sdk.wrap_output,
            tool_name=tool.name,
            known_arguments=frozenset(sdk.arg_model.model_fields),
        )

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        known = self.known_arguments
        unknown = [key for key in arguments_to_validate if key not in known]
        if unknown:
            raise InvalidArguments(
                self.tool_name,
                [{"field": str(key)[:64], "problem": "unknown argument"} for key in unknown],
            )
        try:
            return super().validate_arguments(arguments_to_validate)
        except ValidationError as exc:
            raise InvalidArguments(self.tool_name, _field_errors(exc)) from None


def check_arguments(tools: Iterable[Tool]) -> list[Tool]:
    """`tools` with their argument checks made strict (pass them to `MCPServer(tools=...)`)."""
    checked = list(tools)
    for tool in checked:
        tool.fn_metadata = CheckedArguments.of(tool)
    return checked
