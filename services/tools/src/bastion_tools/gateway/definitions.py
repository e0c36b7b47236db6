"""Upstream tool definitions: their canonical form, hash, exposed name and rule.

A definition is what a client is shown and what the gateway checks calls against: name,
description, input and output schema, annotations (title included, it is shown too).
Its canonical JSON (sorted keys, no spaces, UTF-8) is what is pinned, and its SHA-256 is
how it is named (docs/gateway.md, "Pinning"). Exposed names are `<prefix>_<tool>`, valid
MCP tool names (SEP-986: 1 to 128 of A-Z a-z 0-9 _ - .).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jsonschema.protocols import Validator
from mcp_types import Tool

from bastion_common.policyfile import UpstreamPolicy
from bastion_tools.gateway.schemas import SchemaProblem, compile_schema

__all__ = ["GatewayTool", "canonical", "definition_of", "digest", "exposed_name", "gateway_tool"]

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def definition_of(tool: Tool) -> dict[str, Any]:
    """What is pinned of an upstream tool (wire field names, as clients see them)."""
    wire = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        key: wire[key]
        for key in ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
        if key in wire
    }


def canonical(definition: dict[str, Any]) -> str:
    return json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(canonical_json: str) -> str:
    return hashlib.sha256(canonical_json.encode("utf-8")).hexdigest()


def exposed_name(prefix: str, tool: str) -> str | None:
    """`<prefix>_<tool>`, or None when that is not a valid MCP tool name."""
    name = f"{prefix}_{tool}"
    return name if _TOOL_NAME.match(name) else None


@dataclass(frozen=True)
class GatewayTool:
    """One upstream tool as the gateway serves it: a `guard.rbac.ToolRule` too."""

    name: str  # exposed
    upstream: str
    upstream_tool: str
    permission: str
    cost: int
    definition: dict[str, Any] = field(compare=False, repr=False)
    arguments: Validator = field(compare=False, repr=False)
    output: Validator | None = field(compare=False, repr=False)

    @cached_property
    def listed(self) -> Tool:
        """The definition as this gateway lists it: the upstream's, under the exposed name
        (built once: a listing of hundreds of upstream tools must not rebuild each)."""
        return Tool.model_validate({**self.definition, "name": self.name})


def gateway_tool(
    upstream: str, prefix: str, policy: UpstreamPolicy, definition: dict[str, Any]
) -> GatewayTool | None | SchemaProblem:
    """The tool the gateway serves for `definition`: None when the file denies it or its
    name cannot be exposed, a `SchemaProblem` when its schemas cannot be used."""
    upstream_tool = str(definition["name"])
    rule = policy.tools.get(upstream_tool)
    name = exposed_name(prefix, upstream_tool)
    if name is None or (rule is not None and rule.deny):
        return None
    arguments = compile_schema(definition.get("inputSchema"), "inputSchema")
    if isinstance(arguments, SchemaProblem):
        return arguments
    output_schema = definition.get("outputSchema")
    output = compile_schema(output_schema, "outputSchema") if output_schema is not None else None
    if isinstance(output, SchemaProblem):
        return output
    permission = rule.permission if rule is not None else None
    if permission is None:
        read_only = bool((definition.get("annotations") or {}).get("readOnlyHint"))
        defaults = policy.permissions
        permission = (
            (defaults.read or f"{prefix}:read")
            if read_only
            else (defaults.write or f"{prefix}:write")
        )
    return GatewayTool(
        name=name,
        upstream=upstream,
        upstream_tool=upstream_tool,
        permission=permission,
        cost=rule.cost if rule is not None else 1,
        definition=definition,
        arguments=arguments,
        output=output,
    )
