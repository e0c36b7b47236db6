"""Reading the audit stream in unit tests (every service's tests share these)."""

from __future__ import annotations

from typing import Any

import anyio

from bastion_common.audit import AUDIT_STREAM, AuditEvent
from bastion_common.redis import create_redis

__all__ = ["audit_events", "wait_for_event"]


async def audit_events(redis_url: str, type_: str | None = None) -> list[AuditEvent]:
    """Audit events in the stream (after the publisher has flushed), batches unpacked."""
    redis = create_redis(redis_url)
    try:
        entries = await redis.xrange(AUDIT_STREAM)
    finally:
        await redis.aclose()
    events = [e for _, fields in entries for e in AuditEvent.all_from_stream_fields(fields)]
    return [e for e in events if type_ is None or e.type == type_]


async def wait_for_event(redis_url: str, type_: str, **match: Any) -> AuditEvent:
    """Poll the audit stream until an event of `type_` with these fields (top-level or in
    `details`) appears; fails the test after 5 s."""
    with anyio.fail_after(5):
        while True:
            for event in await audit_events(redis_url, type_):
                if all(
                    getattr(event, k, None) == v or event.details.get(k) == v
                    for k, v in match.items()
                ):
                    return event
            await anyio.sleep(0.02)
