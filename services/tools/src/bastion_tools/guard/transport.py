"""Host and Origin checks: DNS-rebinding protection (MCP transport spec, "Security
Warning"). A Host not configured gets 421, an Origin not configured gets 403.

A pattern is an exact value or `name:*` for that name on any port.

The routing headers of the 2026-07-28 protocol (SEP-2243): `Mcp-Method` and `Mcp-Name`
must say what the body says, or a proxy routing by header and the server running the
body would see two different calls: a mismatch is 400 with JSON-RPC -32020, recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

from mcp_types import HEADER_MISMATCH

from bastion_tools.guard.refusals import Note, Refusal, oauth_error, rpc_error

__all__ = ["check_routing_headers", "check_transport", "host_allowed", "origin_allowed"]


def _matches(value: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if value == pattern:
            return True
        if pattern.endswith(":*") and value.startswith(pattern[:-1]):
            if value[len(pattern) - 1 :].isdigit():
                return True
    return False


def host_allowed(host: str | None, allowed: Sequence[str]) -> bool:
    return bool(host) and _matches(str(host), allowed)


def origin_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    """No Origin header: not a browser, nothing to rebind. Else it must be configured."""
    return origin is None or _matches(origin, allowed)


def check_transport(
    host: str | None, origin: str | None, hosts: Sequence[str], origins: Sequence[str]
) -> None:
    """Refuse a Host (421) or an Origin (403) that is not configured."""
    if not host_allowed(host, hosts):
        raise Refusal(
            421,
            oauth_error("invalid_request", "host not allowed"),
            reason="host",
            note=Note("authz.denied", "denied", details={"reason": "host_not_allowed"}),
        )
    if not origin_allowed(origin, origins):
        raise Refusal(
            403,
            oauth_error("invalid_request", "origin not allowed"),
            reason="origin",
            note=Note("authz.denied", "denied", details={"reason": "origin_not_allowed"}),
        )


def check_routing_headers(
    method_header: str | None, name_header: str | None, method: str | None, tool: str | None
) -> None:
    """SEP-2243: a routing header that is present must match the body's method and, for
    `tools/call`, its tool name (`method` is None for a batch, which has no one method)."""
    if method_header is not None and method is not None and method_header != method:
        raise _mismatch("mcp-method")
    if name_header is not None and method == "tools/call" and name_header != tool:
        raise _mismatch("mcp-name")


def _mismatch(header: str) -> Refusal:
    return Refusal(
        400,
        rpc_error(f"{header} header does not match the request body", HEADER_MISMATCH),
        reason="header_mismatch",
    )
