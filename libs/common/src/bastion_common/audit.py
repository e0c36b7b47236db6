"""Audit events: the versioned schema, and how they sit in the Redis stream.

Every service describes security-relevant steps as `AuditEvent`s and hands them to an
`AuditPublisher` (`bastion_common.publisher`), which appends them to the Redis stream
`audit:events` (the `audit` service consumes it). Values that look like secrets are
redacted before an event leaves the process.

A stream entry holds one event (`event`: its JSON) or, when several are sent together,
up to 64 (`events`: a JSON array, in order); `AuditEvent.all_from_stream_fields` reads
both. One XADD per batch instead of one per event: redis-py's per-command cost was the
largest part of what auditing a tool call cost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import to_json

from bastion_common.contracts import EVENT_TYPES, EventType
from bastion_common.logging import new_id, redact, request_id_var
from bastion_common.redisacl import Grant

__all__ = [
    "AUDIT_STREAM",
    "PUBLISH_GRANT",
    "EVENT_TYPES",
    "EventType",
    "SCHEMA_VERSION",
    "AuditEvent",
    "Outcome",
    "batch_fields",
    "flat_fields",
    "split_batch",
]

AUDIT_STREAM = "audit:events"
# A publisher may only append to the stream: never read, delete, ack or trim it.
PUBLISH_GRANT = Grant(AUDIT_STREAM, "W", only=("xadd",))
SCHEMA_VERSION: Literal[1] = 1
Outcome = Literal["success", "failure", "denied", "error"]

_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def _current_request_id() -> str | None:
    return request_id_var.get()


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(at_ns: int) -> datetime:
    """`at_ns` (as `time.time_ns()`) to the microsecond, cut rather than rounded."""
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)


_FROM_CONTEXT: Any = object()  # trusted_json's request_id when the caller gives none


def _type_name(value: Any) -> str:
    return f"<{type(value).__name__}>"


class AuditEvent(BaseModel):
    """One security-relevant fact. Version 1 of the schema; add fields, never repurpose."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    id: str = Field(default_factory=new_id, min_length=8, max_length=64)
    time: datetime = Field(default_factory=_now)
    type: str = Field(max_length=64, description="dotted name, e.g. token.issued")
    service: str = Field(max_length=32)
    outcome: Outcome = "success"
    principal: str | None = Field(default=None, max_length=256)
    client_id: str | None = Field(default=None, max_length=512)
    ip: str | None = Field(default=None, max_length=64)
    tool: str | None = Field(default=None, max_length=64)
    request_id: str | None = Field(default_factory=_current_request_id, max_length=128)
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not _TYPE.match(value):
            raise ValueError("type must be a dotted lower-case name such as token.issued")
        return value

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("time must carry a timezone")
        return value.astimezone(UTC)

    @field_validator("details")
    @classmethod
    def _redacted(cls, value: dict[str, Any]) -> dict[str, Any]:
        return redact(value)

    @classmethod
    def trusted_json(
        cls,
        type_: EventType,
        service: str,
        outcome: Outcome,
        *,
        principal: str | None = None,
        client_id: str | None = None,
        ip: str | None = None,
        tool: str | None = None,
        details: dict[str, Any] | None = None,
        request_id: str | None | object = _FROM_CONTEXT,
        at_ns: int | None = None,
    ) -> str:
        """The JSON line of an event built by the service itself on a hot path (one per
        tool call), as the publisher sends it.

        `request_id` defaults to the current request's, `at_ns` (when the event
        happened, as `time.time_ns()`) to now: a caller that renders events after they
        happened (`bastion_common.auditor.Auditor`) passes both, read when it happened.

        It is what validation would accept (type from EVENT_TYPES, details redacted,
        strings cut to the schema's limits instead of refused) and what the model would
        serialise (fields in the model's order), built without the model: pydantic's
        validators, and even `model_construct`, cost a few times what serialising the
        fields does."""
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown audit event type {type_!r}")
        if request_id is _FROM_CONTEXT:
            request_id = request_id_var.get()
        fields = {
            "schema_version": SCHEMA_VERSION,
            "id": new_id(),
            "time": _now() if at_ns is None else _utc(at_ns),
            "type": type_,
            "service": service[:32],
            "outcome": outcome,
            "principal": principal[:256] if principal is not None else None,
            "client_id": client_id[:512] if client_id is not None else None,
            "ip": ip[:64] if ip is not None else None,
            "tool": tool[:64] if tool is not None else None,
            "request_id": request_id[:128] if isinstance(request_id, str) else None,
            "details": redact(details) if details else {},
        }
        # A value JSON has no form for is named by its type, never rendered or refused:
        # events rendered together must not fail one another.
        return to_json(fields, fallback=_type_name).decode()

    def to_stream_fields(self) -> dict[str, str]:
        return {"v": str(self.schema_version), "event": self.model_dump_json()}

    @classmethod
    def from_stream_fields(cls, fields: dict[bytes, bytes] | dict[str, str]) -> AuditEvent:
        """The event of a one-event entry (`event` field)."""
        return cls.model_validate_json(_text_fields(fields)["event"])

    @classmethod
    def all_from_stream_fields(
        cls, fields: dict[bytes, bytes] | dict[str, str]
    ) -> list[AuditEvent]:
        """The events of any entry: one (`event`) or a batch (`events`, a JSON array)."""
        raw = _text_fields(fields)
        if "event" in raw:
            return [cls.model_validate_json(raw["event"])]
        return [cls.model_validate(event) for event in split_batch(raw["events"])]


def _text_fields(fields: dict[bytes, bytes] | dict[str, str]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }


def batch_fields(events_json: Sequence[str]) -> dict[str, str]:
    """One stream entry for events already serialised (one: `event`, more: `events`)."""
    if len(events_json) == 1:
        return {"v": str(SCHEMA_VERSION), "event": events_json[0]}
    return {"v": str(SCHEMA_VERSION), "events": "[" + ",".join(events_json) + "]"}


def flat_fields(fields: dict[str, str]) -> list[str]:
    """A stream entry's fields as XADD's argument list."""
    return [part for pair in fields.items() for part in pair]


def split_batch(events: str) -> list[dict[str, Any]]:
    """The events of an `events` field, not yet validated.

    Raises ValueError when the field is not a JSON array of objects."""
    parsed = json.loads(events)
    if not isinstance(parsed, list) or not all(isinstance(e, dict) for e in parsed):
        raise ValueError("events must be a JSON array of objects")
    return parsed
