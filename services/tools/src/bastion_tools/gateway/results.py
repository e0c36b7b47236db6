"""What comes back from an upstream, checked before the caller sees it: structured
content against the pinned output schema, and credentials redacted from every text the
result carries (`bastion_common.logging.find_credentials`: JWTs, `mcp_` keys, bearer
values, private keys, common cloud keys)."""

from __future__ import annotations

from typing import Any

from mcp_types import CallToolResult

from bastion_common.logging import find_credentials
from bastion_tools.gateway.definitions import GatewayTool
from bastion_tools.gateway.schemas import problems

__all__ = ["output_problems", "redacted"]

# Base64 payloads (images, audio, blobs): not text a credential pattern could be read in.
_BINARY_FIELDS = frozenset({"blob", "data"})


def output_problems(tool: GatewayTool, result: CallToolResult) -> list[dict[str, str]]:
    """Why `result` does not match the tool's pinned output schema (empty: it does).
    MCP tools spec: a tool with an output schema MUST return conforming structured content."""
    if tool.output is None or result.is_error:
        return []
    if result.structured_content is None:
        return [{"field": "structuredContent", "problem": "missing"}]
    return problems(tool.output, result.structured_content, "structuredContent")


def redacted(result: CallToolResult) -> tuple[CallToolResult, list[str]]:
    """`result` with credentials replaced in every string it carries (content, structured
    content, `_meta`, annotations), and the kind of each one removed."""
    kinds: list[str] = []
    wire = _walk(result.model_dump(mode="json", by_alias=True, exclude_none=True), kinds)
    if not kinds:
        return result, kinds
    return CallToolResult.model_validate(wire), kinds


def _walk(value: Any, kinds: list[str]) -> Any:
    if isinstance(value, str):
        cleaned, found = find_credentials(value)
        kinds += found
        return cleaned
    if isinstance(value, list):
        return [_walk(item, kinds) for item in value]
    if isinstance(value, dict):
        return {
            key: item if key in _BINARY_FIELDS else _walk(item, kinds)
            for key, item in value.items()
        }
    return value
