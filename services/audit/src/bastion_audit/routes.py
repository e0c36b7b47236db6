"""The audit API: events, the security report, chain verification (docs/architecture.md).

Every route needs a viewer token (`access.py`). Store work runs in a thread.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request

from bastion_audit import anchor
from bastion_audit.access import Viewer
from bastion_audit.anchor import AnchorBook
from bastion_audit.report import Range, Thresholds, build_report
from bastion_audit.signing import CheckpointSigner
from bastion_audit.store import AuditStore, EventFilter, VerifyResult
from bastion_common.errors import ServiceError
from bastion_common.service import ServiceState

__all__ = ["router"]

router = APIRouter(prefix="/v1")
_CURSOR = re.compile(r"^[0-9]{1,18}$")


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.bastion
    return state


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/events")
async def events(
    request: Request,
    _viewer: Viewer,
    since: datetime | None = None,
    until: datetime | None = None,
    type: Annotated[str | None, Query(max_length=64)] = None,  # noqa: A002 - the API's name
    principal: Annotated[str | None, Query(max_length=256)] = None,
    outcome: Literal["success", "failure", "denied", "error"] | None = None,
    tool: Annotated[str | None, Query(max_length=64)] = None,
    ip: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
) -> dict[str, Any]:
    if cursor is not None and not _CURSOR.match(cursor):
        raise ServiceError(400, "invalid_request", "cursor is not one this API returned")
    since, until = _utc(since), _utc(until)
    if since and until and since >= until:
        raise ServiceError(400, "invalid_request", "since must be before until")
    store: AuditStore = _state(request).extra["store"]
    flt = EventFilter(since, until, type, principal, outcome, tool, ip)
    after = int(cursor) if cursor else 0
    rows = await anyio.to_thread.run_sync(
        lambda: store.query(where=flt, after_seq=after, limit=limit)
    )
    next_cursor = str(rows[-1]["seq"]) if len(rows) == limit else None
    return {"events": rows, "next_cursor": next_cursor}


@router.get("/report")
async def report(
    request: Request,
    _viewer: Viewer,
    range: Range = "24h",  # noqa: A002 - the API's name
) -> dict[str, Any]:
    state = _state(request)
    store: AuditStore = state.extra["store"]
    thresholds: Thresholds = state.extra["thresholds"]
    return await anyio.to_thread.run_sync(lambda: build_report(store, range, thresholds))


@router.get("/verify")
async def verify(request: Request, _viewer: Viewer) -> dict[str, Any]:
    state = _state(request)
    store: AuditStore = state.extra["store"]
    signer: CheckpointSigner = state.extra["signer"]
    retention: timedelta | None = state.extra.get("retention")
    # The anchors first: the chain only grows, so it must hold at least what they name.
    anchors: AnchorBook = state.extra["anchors"]
    found, unreadable, newest = await anchor.read_consistent(anchors, store)
    max_age: timedelta = state.extra["max_anchor_age"]

    def walk() -> VerifyResult:
        result = store.verify(signer, retention=retention)
        # What is there is intact; now whether anything was cut from the end (anchor.py).
        return anchor.check(result, store, signer, found, unreadable, newest, max_age=max_age)

    checked = await anyio.to_thread.run_sync(walk)
    return checked.to_dict()
