"""Every audit event the gateway makes, in one place (the event types are in
`bastion_common.contracts.EVENT_TYPES`). Forwarded calls themselves are recorded by
`bastion_tools.policy.ToolCallPolicy` (`tool.called`, with the upstream)."""

from __future__ import annotations

from typing import Any

from bastion_common.audit import EventType, Outcome
from bastion_common.auditor import Auditor
from bastion_common.tokens import Principal

__all__ = ["GatewayRecord"]


class GatewayRecord:
    def __init__(self, auditor: Auditor) -> None:
        self._auditor = auditor

    def definition(
        self, status: str, upstream: str, tool: str, digest: str, **details: Any
    ) -> None:
        """A pin step: pinned (first sight), held (changed or new), changed/added (auto)."""
        kind: EventType = "tool.definition_changed"
        if status in ("pinned", "held"):
            kind = "tool.pinned" if status == "pinned" else "tool.held"
        outcome: Outcome = "denied" if status == "held" else "success"
        self._auditor.emit(
            kind,
            outcome,
            principal="gateway",
            tool=tool,
            upstream=upstream,
            digest=digest,
            status=status,
            **details,
        )

    def approved(self, upstream: str, tool: str, digest: str, by: str) -> None:
        self._auditor.emit(
            "tool.approved",
            "success",
            principal=by,
            tool=tool,
            upstream=upstream,
            digest=digest,
        )

    def admin_refused(self, principal: Principal | None, ip: str | None, reason: str) -> None:
        """A request to the gateway's admin API without a valid admin credential."""
        if principal is None:
            self._auditor.emit("authn.failed", "failure", ip=ip, reason=reason,
                               route="gateway_admin")  # fmt: skip
        else:
            self._auditor.emit("authz.denied", "denied", principal=principal, ip=ip,
                               reason=reason, route="gateway_admin")  # fmt: skip

    def refused_held(self, principal: Principal, ip: str | None, tool: str, upstream: str) -> None:
        self._auditor.emit(
            "authz.denied",
            "denied",
            principal=principal,
            ip=ip,
            tool=tool,
            upstream=upstream,
            reason="tool_held",
        )

    def unusable(self, upstream: str, tool: str, where: str, problem: str) -> None:
        self._auditor.emit(
            "tool.definition_refused",
            "failure",
            principal="gateway",
            tool=tool,
            upstream=upstream,
            where=where,
            problem=problem,
        )

    def output_redacted(
        self, principal: Principal, ip: str | None, tool: str, upstream: str, kinds: list[str]
    ) -> None:
        self._auditor.emit(
            "tool.output_redacted",
            "success",
            principal=principal,
            ip=ip,
            tool=tool,
            upstream=upstream,
            count=len(kinds),
            kinds=sorted(set(kinds)),
        )

    def output_invalid(
        self, principal: Principal, ip: str | None, tool: str, upstream: str, fields: list[str]
    ) -> None:
        self._auditor.emit(
            "tool.output_invalid",
            "error",
            principal=principal,
            ip=ip,
            tool=tool,
            upstream=upstream,
            fields=fields,
        )
