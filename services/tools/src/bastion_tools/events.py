"""Audit events of the tools service, built in one place (types from EVENT_TYPES).

Events are handed to `AuditPublisher.emit`: the call does not wait for Redis.
"""

from __future__ import annotations

from typing import Any

from bastion_common.audit import EVENT_TYPES, AuditEvent, AuditPublisher, Outcome
from bastion_common.logging import redact
from bastion_common.tokens import Principal

__all__ = ["Auditor"]

_MAX_ARG_CHARS = 200


def _summarise(arguments: Any) -> dict[str, Any]:
    """Arguments for the record: secrets and contents redacted, long values cut."""
    if not isinstance(arguments, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in redact({str(k): v for k, v in list(arguments.items())[:16]}).items():
        if isinstance(value, str) and len(value) > _MAX_ARG_CHARS:
            value = value[:_MAX_ARG_CHARS] + "..."
        elif not isinstance(value, str | int | float | bool | None):
            value = f"<{type(value).__name__}>"
        out[key[:64]] = value
    return out


class Auditor:
    def __init__(self, publisher: AuditPublisher, service: str = "tools") -> None:
        self._publisher = publisher
        self._service = service

    def emit(
        self,
        type_: str,
        outcome: Outcome,
        *,
        principal: Principal | None = None,
        principal_name: str | None = None,
        ip: str | None = None,
        tool: str | None = None,
        arguments: Any = None,
        **details: Any,
    ) -> None:
        assert type_ in EVENT_TYPES, type_  # noqa: S101 - a typo here is a programming error
        if arguments is not None:
            details["arguments"] = _summarise(arguments)
        self._publisher.emit(
            AuditEvent(
                type=type_,
                service=self._service,
                outcome=outcome,
                principal=(principal.subject if principal else principal_name),
                client_id=principal.client_id if principal else None,
                ip=ip,
                tool=tool[:64] if tool else None,
                details=details,
            )
        )
