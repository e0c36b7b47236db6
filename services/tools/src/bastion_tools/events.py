"""Audit events of the tools service, built in one place (types from EVENT_TYPES).

Events are handed to `AuditPublisher.emit`, so a call never waits for Redis. They are
held for `linger` seconds (20 ms by default) first and handed over together, so the
publisher sends them as one pipelined batch: one Redis write per batch instead of one
per call, which measurably cuts the CPU each call costs under load. Events still held
are handed over by `flush()` (the lifespan calls it on shutdown, before the publisher
closes); a crash loses at most `linger` seconds of events that were only in memory
anyway.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bastion_common.audit import EVENT_TYPES, AuditEvent, AuditPublisher, EventType, Outcome
from bastion_common.logging import (
    REDACTED,
    get_logger,
    is_sensitive_key,
    redact_text,
    request_id_var,
)
from bastion_common.tokens import Principal

__all__ = ["Auditor"]

log = get_logger(__name__)

_MAX_ARG_CHARS = 200
_MAX_KEY_CHARS = 64
_SCALARS = (int, float, bool, type(None))


def _summarise(arguments: Any) -> dict[str, Any]:
    """Arguments for the record: long values cut, other types named, at most 16.

    The event is redacted as a whole when it is rendered (`AuditEvent.trusted_json`), so
    this only redacts what cutting would hide from that pass: a long string is redacted
    before it is cut (a token cut in half no longer looks like one), and a long key is
    judged whole before it is cut."""
    if not isinstance(arguments, dict):
        return {}
    out: dict[str, Any] = {}
    for raw_key, value in list(arguments.items())[:16]:
        key = str(raw_key)
        if isinstance(value, str):
            if len(value) > _MAX_ARG_CHARS:
                value = redact_text(value)
                if len(value) > _MAX_ARG_CHARS:
                    value = value[:_MAX_ARG_CHARS] + "..."
        elif not isinstance(value, _SCALARS):
            value = f"<{type(value).__name__}>"
        if len(key) > _MAX_KEY_CHARS:
            if is_sensitive_key(key) and value not in (None, ""):
                value = REDACTED
            key = key[:_MAX_KEY_CHARS]
        out[key] = value
    return out


# What `emit` keeps of an event until it is rendered: type, outcome, principal (or a
# name), ip, tool, details, request id, time (ns).
_Held = tuple[
    EventType, Outcome, Principal | None, str | None, str | None, str | None, dict[str, Any],
    str | None, int,
]  # fmt: skip


class Auditor:
    def __init__(
        self,
        publisher: AuditPublisher,
        service: str = "tools",
        *,
        linger: float = 0.02,
        max_batch: int = 256,
    ) -> None:
        self._publisher = publisher
        self._service = service
        self._linger = linger
        self._max_batch = max_batch
        self._held: list[_Held] = []
        self._timer: asyncio.TimerHandle | None = None

    def flush(self) -> None:
        """Render every held event and hand them to the publisher now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        if held:
            self._publisher.emit_many([self._render_or_say_why(event) for event in held])

    def emit(
        self,
        type_: EventType,
        outcome: Outcome,
        *,
        principal: Principal | None = None,
        principal_name: str | None = None,
        ip: str | None = None,
        tool: str | None = None,
        arguments: Any = None,
        **details: Any,
    ) -> None:
        """Record an event. What it says is read now (the arguments summarised, the
        request id and the time taken) and rendered when the held events are handed
        over, one after another: the same code run over and over costs a busy server a
        fraction of what rendering each event inside its call did."""
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown audit event type {type_!r}")
        if arguments is not None:
            details["arguments"] = _summarise(arguments)
        event: _Held = (type_, outcome, principal, principal_name, ip, tool, details,
                        request_id_var.get(), time.time_ns())  # fmt: skip
        if self._linger <= 0:
            self._publisher.emit(self._render_or_say_why(event))
            return
        self._held.append(event)
        if len(self._held) >= self._max_batch:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self.flush)

    def _render_or_say_why(self, event: _Held) -> str:
        """The event's JSON line; when its details cannot be rendered (a structure that
        refers to itself, say), the event without them and the reason: one event must
        not cost the others held with it their place in the record."""
        try:
            return self._render(*event)
        except Exception as exc:  # noqa: BLE001 - any failure: the event is still recorded
            log.error("audit.event_unrenderable", type=event[0], error=type(exc).__name__)
            return self._render(*event[:6], {"unrenderable": type(exc).__name__}, *event[7:])

    def _render(
        self,
        type_: EventType,
        outcome: Outcome,
        principal: Principal | None,
        principal_name: str | None,
        ip: str | None,
        tool: str | None,
        details: dict[str, Any],
        request_id: str | None,
        at_ns: int,
    ) -> str:
        if principal is not None:
            # The jti lets the audit report see one token presented from many IPs.
            details.setdefault("token_id", principal.token_id)
        return AuditEvent.trusted_json(
            type_,
            self._service,
            outcome,
            principal=principal.subject if principal else principal_name,
            client_id=principal.client_id if principal else None,
            ip=ip,
            tool=tool,
            details=details,
            request_id=request_id,
            at_ns=at_ns,
        )
