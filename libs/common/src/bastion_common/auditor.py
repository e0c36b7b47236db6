"""The one audit front end of every service: `Auditor(publisher, service)`.

A service says what happened (`emit` for the request paths, `await publish` where the
answer must wait until the event is stored); the auditor renders each event once, with
`AuditEvent.trusted_json`, and hands the JSON lines to the `AuditPublisher`, which sends
them to the audit stream or spools them while Redis is away.

`linger` (seconds) is the one batching stage: emitted events are held that long and
handed over together, so the publisher sends them in one pipelined write. The tools
service, which audits every call, holds them 20 ms; the others hand each one over at
once. Held events go out on `flush()` (the service lifespan calls it before the
publisher closes) and before any `publish`, so the order of events is kept.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bastion_common.audit import AuditEvent, EventType, Outcome
from bastion_common.contracts import EVENT_TYPES
from bastion_common.logging import (
    REDACTED,
    get_logger,
    is_sensitive_key,
    redact_text,
    request_id_var,
)
from bastion_common.publisher import AuditPublisher
from bastion_common.tokens import Principal

__all__ = ["Auditor", "summarise_arguments"]

log = get_logger(__name__)

_MAX_ARG_CHARS = 200
_MAX_KEY_CHARS = 64
_MAX_ARGS = 16
_SCALARS = (int, float, bool, type(None))


def summarise_arguments(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments for the record: long values cut, other types named, at
    most 16.

    The event is redacted as a whole when it is rendered, so this only redacts what
    cutting would hide from that pass: a long string is redacted before it is cut (a
    token cut in half no longer looks like one), and a long key is judged whole before
    it is cut."""
    if not isinstance(arguments, dict):
        return {}
    out: dict[str, Any] = {}
    for raw_key, value in list(arguments.items())[:_MAX_ARGS]:
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


# What `emit` keeps of an event until it is rendered.
_Held = tuple[
    EventType, Outcome, str | None, str | None, str | None, str | None, dict[str, Any],
    str | None, int,
]  # fmt: skip


class Auditor:
    def __init__(
        self,
        publisher: AuditPublisher,
        service: str,
        *,
        linger: float = 0.0,
        max_batch: int = 256,
    ) -> None:
        self.publisher = publisher
        self.service = service
        self._linger = linger
        self._max_batch = max_batch
        self._held: list[_Held] = []
        self._timer: asyncio.TimerHandle | None = None

    def emit(
        self,
        type_: str,
        outcome: Outcome = "success",
        *,
        principal: Principal | str | None = None,
        client_id: str | None = None,
        ip: str | None = None,
        tool: str | None = None,
        arguments: Any = None,
        **details: Any,
    ) -> None:
        """Record an event; never waits. `principal` is who acted: a validated token's
        `Principal` (its subject, client and token id are recorded) or a name.
        What the event says is read now (arguments summarised, request id, time) and
        rendered when it is handed over."""
        event = self._held_event(type_, outcome, principal, client_id, ip, tool, arguments,
                                 details)  # fmt: skip
        if self._linger <= 0:
            self.publisher.emit(self._render(event))
            return
        self._held.append(event)
        if len(self._held) >= self._max_batch:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self.flush)

    async def publish(
        self,
        type_: str,
        outcome: Outcome = "success",
        *,
        principal: Principal | str | None = None,
        client_id: str | None = None,
        ip: str | None = None,
        tool: str | None = None,
        **details: Any,
    ) -> None:
        """Record an event and return once it is in Redis or the spool, after every
        event emitted before it."""
        event = self._held_event(type_, outcome, principal, client_id, ip, tool, None, details)
        self.flush()
        await self.publisher.publish(self._render(event))

    def flush(self) -> None:
        """Render every held event and hand them to the publisher now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        if held:
            self.publisher.emit_many([self._render(event) for event in held])

    async def drain(self) -> None:
        """Wait until every event recorded so far is in Redis or the spool."""
        self.flush()
        await self.publisher.drain()

    def _held_event(
        self,
        type_: str,
        outcome: Outcome,
        principal: Principal | str | None,
        client_id: str | None,
        ip: str | None,
        tool: str | None,
        arguments: Any,
        details: dict[str, Any],
    ) -> _Held:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown audit event type {type_!r}")
        if arguments is not None:
            details["arguments"] = summarise_arguments(arguments)
        if isinstance(principal, Principal):
            name: str | None = principal.subject
            client_id = client_id or principal.client_id
            # The jti lets the audit report see one token presented from many IPs.
            details.setdefault("token_id", principal.token_id)
        else:
            name = principal
        return (type_, outcome, name, client_id, ip, tool, details,
                request_id_var.get(), time.time_ns())  # fmt: skip

    def _render(self, event: _Held) -> str:
        """The event's JSON line; when its details cannot be rendered (a structure that
        refers to itself, say), the event without them and the reason: one event must
        not cost the others handed over with it their place in the record."""
        try:
            return self._line(*event)
        except Exception as exc:  # noqa: BLE001 - any failure: the event is still recorded
            log.error("audit.event_unrenderable", type=event[0], error=type(exc).__name__)
            return self._line(*event[:6], {"unrenderable": type(exc).__name__}, *event[7:])

    def _line(
        self,
        type_: EventType,
        outcome: Outcome,
        principal: str | None,
        client_id: str | None,
        ip: str | None,
        tool: str | None,
        details: dict[str, Any],
        request_id: str | None,
        at_ns: int,
    ) -> str:
        return AuditEvent.trusted_json(
            type_,
            self.service,
            outcome,
            principal=principal,
            client_id=client_id,
            ip=ip,
            tool=tool,
            details=details,
            request_id=request_id,
            at_ns=at_ns,
        )
