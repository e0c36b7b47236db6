"""JSON-RPC errors of the gateway, each naming the upstream (the caller sees whose fault
it is; no trace, no upstream internals beyond its own redacted message)."""

from __future__ import annotations

from typing import Final

from mcp.shared.exceptions import MCPError

from bastion_common.logging import redact_text

__all__ = [
    "TOOL_HELD",
    "UPSTREAM_MALFORMED",
    "UPSTREAM_REFUSED",
    "UPSTREAM_UNAVAILABLE",
    "UpstreamCallError",
]

UPSTREAM_UNAVAILABLE: Final = -32010
"""Unreachable, not connected, too slow, at its concurrency cap, or its circuit is open."""
UPSTREAM_MALFORMED: Final = -32011
"""The upstream answered something that is not a valid result for the pinned definition."""
TOOL_HELD: Final = -32012
"""The tool's definition changed (or it is new) and awaits an admin's approval."""
UPSTREAM_REFUSED: Final = -32013
"""The upstream answered the call with a JSON-RPC error of its own."""


class UpstreamCallError(MCPError):
    def __init__(self, code: int, upstream: str, message: str, reason: str) -> None:
        self.upstream = upstream
        self.reason = reason
        super().__init__(
            code=code,
            message=f"upstream {upstream}: {message}",
            data={"upstream": upstream, "reason": reason},
        )


def refused(upstream: str, code: int, message: str) -> UpstreamCallError:
    """The upstream's own error, its text redacted and cut (it is passed to the caller)."""
    text = redact_text(message)[:300]
    return UpstreamCallError(
        UPSTREAM_REFUSED, upstream, f"refused the call ({code}): {text}", "refused"
    )
