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

# Content fields that hold text a person or a model reads; base64 blobs are left alone.
_TEXT_FIELDS = frozenset({"text", "uri", "title", "description", "name"})


def output_problems(tool: GatewayTool, result: CallToolResult) -> list[dict[str, str]]:
    """Why `result` does not match the tool's pinned output schema (empty: it does).
    MCP tools spec: a tool with an output schema MUST return conforming structured content."""
    if tool.output is None or result.is_error:
        return []
    if result.structured_content is None:
        return [{"field": "structuredContent", "problem": "missing"}]
    return problems(tool.output, result.structured_content, "structuredContent")


def redacted(result: CallToolResult) -> tuple[CallToolResult, list[str]]:
    """`result` with credentials replaced, and the kind of each one removed."""
    kinds: list[str] = []
    wire = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    wire["content"] = [_content(block, kinds) for block in wire.get("content", [])]
    if "structuredContent" in wire:
        wire["structuredContent"] = _walk(wire["structuredContent"], kinds)
    if not kinds:
        return result, kinds
    return CallToolResult.model_validate(wire), kinds


def _content(block: Any, kinds: list[str]) -> Any:
    if not isinstance(block, dict):
        return block
    out = dict(block)
    for key, value in block.items():
        if key in _TEXT_FIELDS and isinstance(value, str):
            out[key] = _text(value, kinds)
        elif key == "resource" and isinstance(value, dict):
            out[key] = _content(value, kinds)
    return out


def _walk(value: Any, kinds: list[str]) -> Any:
    if isinstance(value, str):
        return _text(value, kinds)
    if isinstance(value, list):
        return [_walk(item, kinds) for item in value]
    if isinstance(value, dict):
        return {key: _walk(item, kinds) for key, item in value.items()}
    return value


def _text(value: str, kinds: list[str]) -> str:
    cleaned, found = find_credentials(value)
    kinds += found
    return cleaned
