"""RBAC per tool: which permission each tool needs, what a request body calls, step-up,
and `tools/list` filtering (docs/architecture.md, "Roles and permissions").

A `tools/call` for a tool the token's scopes do not allow is refused 403
`insufficient_scope` naming every scope needed, held ones included, so the client can
step up (RFC 6750 §3.1, MCP authorization "Scope challenge handling"). A caller is shown
only the tools its scopes allow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import pydantic_core

from bastion_common.tokens import Principal
from bastion_tools.guard.refusals import Note, Refusal, bearer_challenge, oauth_error, rpc_error

__all__ = ["Calls", "Rule", "ToolRule", "allowed", "read_calls", "step_up", "visible_tools"]

MAX_BATCH = 32


class ToolRule(Protocol):
    """What the guard needs to know of a tool (`tools.catalog.ToolSpec` is one)."""

    @property
    def permission(self) -> str: ...

    @property
    def cost(self) -> int: ...


@dataclass(frozen=True)
class Rule:
    """A tool's rule: the permission (OAuth scope) it needs and its rate-limit cost."""

    permission: str
    cost: int = 1


class Calls(NamedTuple):
    """What a request body asks for: its cost and the rules of the tools it calls."""

    cost: int
    rules: tuple[ToolRule, ...]
    first_tool: str | None
    unparsable: bool = False
    # The method of a single (non-batch) message, for the SEP-2243 header check.
    method: str | None = None


def read_calls(body: bytes, rules: Mapping[str, ToolRule]) -> Calls:
    """The calls in a JSON-RPC body (one message or a batch of at most MAX_BATCH).

    Parsed by the SDK's own parser (pydantic_core's): the guard must read the body as the
    SDK will, or a parser differential would let RBAC check one tool and the SDK run
    another. Unknown tools and other methods cost 1 each."""
    if not body:
        return Calls(1, (), None)
    try:
        parsed = pydantic_core.from_json(body)
    except ValueError:
        return Calls(1, (), None, unparsable=True)
    messages = parsed if isinstance(parsed, list) else [parsed]
    single = parsed.get("method") if isinstance(parsed, dict) else None
    if len(messages) > MAX_BATCH:
        raise Refusal(400, rpc_error("too many messages in one batch", -32600), reason="batch")
    cost = 0
    found: list[ToolRule] = []
    first: str | None = None
    for message in messages:
        name = _called_tool(message)
        rule = rules.get(name) if name is not None else None
        first = first or name
        if rule is not None:
            found.append(rule)
            cost += rule.cost
        else:
            cost += 1
    return Calls(max(1, cost), tuple(found), first,
                 method=single if isinstance(single, str) else None)  # fmt: skip


def _called_tool(message: Any) -> str | None:
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return name if isinstance(name, str) else None


def step_up(principal: Principal, calls: Calls, resource_metadata_url: str) -> None:
    """Refuse (403 `insufficient_scope`) calls the principal's scopes do not allow,
    naming every scope needed, held ones included, so the client can step up."""
    needed = {rule.permission for rule in calls.rules}
    missing = needed - principal.scopes
    if not missing:
        return
    description = f"this call needs {' '.join(sorted(missing))}"
    challenge = bearer_challenge(
        resource_metadata_url,
        principal.scopes | needed,
        error="insufficient_scope",
        description=description,
    )
    raise Refusal(
        403,
        oauth_error("insufficient_scope", description),
        {"WWW-Authenticate": challenge},
        reason="insufficient_scope",
        note=Note(
            "authz.denied",
            "denied",
            principal,
            calls.first_tool,
            {"required": sorted(needed), "missing": sorted(missing)},
        ),
    )


def allowed(rules: Mapping[str, ToolRule], name: str, principal: Principal) -> bool:
    """A tool with no rule is never allowed (deny by default)."""
    rule = rules.get(name)
    return rule is not None and rule.permission in principal.scopes


def visible_tools(
    rules: Mapping[str, ToolRule], tools: Sequence[Any], principal: Principal
) -> list[Any]:
    """`tools` (SDK `Tool`s or their wire dicts) cut down to those `principal` may call."""
    out = []
    for tool in tools:
        name = tool.get("name") if isinstance(tool, Mapping) else getattr(tool, "name", None)
        if isinstance(name, str) and allowed(rules, name, principal):
            out.append(tool)
    return out
