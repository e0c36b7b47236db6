"""Audit events of the keys service, in the shared vocabulary (`EVENT_TYPES`).

Key management is rare and published before the response (`publish`); the exchange and
introspection paths are hot, so their events are queued (`emit`) and sent in batches.
Events carry the key id, never the key (and the publisher redacts `mcp_...` anyway).
"""

from __future__ import annotations

from typing import Any

from bastion_common.audit import EVENT_TYPES, AuditEvent, AuditPublisher, Outcome

__all__ = ["Auditor"]


class Auditor:
    def __init__(self, publisher: AuditPublisher, service: str) -> None:
        self._publisher = publisher
        self._service = service

    def _event(
        self,
        type_: str,
        outcome: Outcome,
        principal: str | None,
        client_id: str | None,
        ip: str | None,
        details: dict[str, Any],
    ) -> AuditEvent:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown audit event type {type_}")
        return AuditEvent(
            type=type_,
            service=self._service,
            outcome=outcome,
            principal=principal[:256] if principal else None,
            client_id=client_id,
            ip=ip,
            details=details,
        )

    async def publish(
        self,
        type_: str,
        outcome: Outcome = "success",
        *,
        principal: str | None = None,
        client_id: str | None = None,
        ip: str | None = None,
        **details: Any,
    ) -> None:
        await self._publisher.publish(
            self._event(type_, outcome, principal, client_id, ip, details)
        )

    def emit(
        self,
        type_: str,
        outcome: Outcome = "success",
        *,
        principal: str | None = None,
        client_id: str | None = None,
        ip: str | None = None,
        **details: Any,
    ) -> None:
        self._publisher.emit(self._event(type_, outcome, principal, client_id, ip, details))
