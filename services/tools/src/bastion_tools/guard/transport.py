"""Host and Origin checks: DNS-rebinding protection (MCP transport spec, "Security
Warning"). A Host not configured gets 421, an Origin not configured gets 403.

A pattern is an exact value or `name:*` for that name on any port.
"""

from __future__ import annotations

from collections.abc import Sequence

from bastion_tools.guard.refusals import Note, Refusal, oauth_error

__all__ = ["check_transport", "host_allowed", "origin_allowed"]


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
