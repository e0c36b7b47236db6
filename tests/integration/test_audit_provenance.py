"""Events authenticated by their service, in the stack: from inside the tools container,
with tools' own Redis user and event key, an attacker appends failed logins in auth's
name. The collector keeps them, flags them `verified: false`, and the security report
raises `unauthenticated_events`; auth's own events stay verified."""

from __future__ import annotations

import uuid

import httpx2
import pytest

from tests.integration.audit_api import AuditApi, now
from tests.integration.conftest import Stack

pytestmark = pytest.mark.anyio

# In the tools container: what a compromised tools could write, with what it was given.
FORGE = """
import os, sys, redis
from bastion_common.audit import AUDIT_STREAM, AuditEvent, batch_fields
from bastion_common.eventsign import EntrySigner
r = redis.Redis.from_url(os.environ["REDIS_URL"])
signer = EntrySigner("tools", os.environ["BASTION_EVENT_KEY"].encode())
lines = [AuditEvent(type="auth.login", service="auth", outcome="failure",
                    principal=sys.argv[1], ip="10.6.6.6").model_dump_json() for _ in range(3)]
r.xadd(AUDIT_STREAM, signer.sign(batch_fields(lines)))
"""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_an_entry_from_tools_claiming_to_be_auth_is_flagged_and_alerted(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    victim = f"forged-{uuid.uuid4().hex[:8]}"
    stack.exec("tools", "python", "-c", FORGE, victim)
    forged = await audit.wait_for("auth.login", since=since, principal=victim, count=3)
    assert len(forged) == 3  # kept, never dropped
    for event in forged:
        assert event["service"] == "auth"
        assert event["entry"] == {
            "verified": False, "signed_by": "tools",
            "problem": "signed by tools but claims to come from auth",
        }  # fmt: skip
    headers = {"Authorization": f"Bearer {await audit.token()}"}
    report = httpx2.get(
        f"{stack.urls['audit']}/v1/report", params={"range": "1h"}, headers=headers, timeout=15
    ).json()
    alerts = [
        a for a in report["alerts"]
        if a["rule"] == "unauthenticated_events" and a["service"] == "auth"
    ]  # fmt: skip
    assert len(alerts) == 1
    assert "signed by tools but claims to come from auth" in alerts[0]["summary"]
    assert {e["id"] for e in forged} & set(alerts[0]["evidence"]["sample_event_ids"])
    # A service's own event verifies: audit records this refused request itself.
    httpx2.get(f"{stack.urls['audit']}/v1/events", headers={"Authorization": "Bearer junk"})
    genuine = await audit.wait_for(
        "authn.failed", since=since, where=lambda e: e["service"] == "audit"
    )
    assert all(e["entry"] == {"verified": True, "signed_by": "audit", "problem": None}
               for e in genuine)  # fmt: skip
