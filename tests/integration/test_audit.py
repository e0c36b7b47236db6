"""The audit container in the stack: refusals, the chain verified in place, a poison
entry dead-lettered, and exactly-once storage across a kill -9 of the collector."""

from __future__ import annotations

import json
import time
import uuid

import httpx2
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

PUBLISH = """
import json, os, sys, redis
from bastion_common.audit import AUDIT_STREAM, AuditEvent
r = redis.Redis.from_url(os.environ["REDIS_URL"])
run, total = sys.argv[1], int(sys.argv[2])
pipe = r.pipeline(transaction=False)
for n in range(total):
    e = AuditEvent(type="tool.called", service="it", principal=run, details={"n": n})
    pipe.xadd(AUDIT_STREAM, e.to_stream_fields())
pipe.execute()
if len(sys.argv) > 3:
    r.xadd(AUDIT_STREAM, {"v": "1", "event": "{poison " + run})
"""

COUNT = """
import sqlite3, sys, json
db = sqlite3.connect("file:/data/audit.sqlite3?mode=ro", uri=True)
rows = db.execute("SELECT json_extract(body, '$.details.n') FROM events WHERE principal = ?",
                  (sys.argv[1],)).fetchall()
print(json.dumps(sorted(n for (n,) in rows)))
"""

DEAD = """
import os, redis, json
r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
print(json.dumps([f for _, f in r.xrange("audit:dead")]))
"""


def _stored(stack: Stack, run: str) -> list[int]:
    out = stack.exec("audit", "python", "-c", COUNT, run)
    numbers: list[int] = json.loads(out)
    return numbers


def _wait(stack: Stack, run: str, total: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    numbers: list[int] = []
    while time.monotonic() < deadline:
        numbers = _stored(stack, run)
        if len(numbers) >= total:
            break
        time.sleep(0.5)
    return numbers


def test_the_audit_api_refuses_a_caller_without_a_valid_token(stack: Stack) -> None:
    url = stack.urls["audit"]
    missing = httpx2.get(f"{url}/v1/report", params={"range": "1h"})
    assert missing.status_code == 401
    assert missing.json()["error"] == "invalid_token"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    forged = httpx2.get(f"{url}/v1/events", headers={"Authorization": "Bearer eyJhbGciOi.x.y"})
    assert forged.status_code == 401
    assert "Traceback" not in forged.text


def test_a_poison_entry_lands_in_the_dead_letter_stream(stack: Stack) -> None:
    run = f"poison-{uuid.uuid4().hex[:8]}"
    stack.exec("audit", "python", "-c", PUBLISH, run, "3", "poison")
    assert _wait(stack, run, 3) == [0, 1, 2]
    deadline = time.monotonic() + 30
    dead: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        dead = [d for d in json.loads(stack.exec("audit", "python", "-c", DEAD)) if run in d["raw"]]
        if dead:
            break
        time.sleep(0.5)
    assert dead and dead[0]["reason"].startswith("invalid event")


def test_events_are_stored_exactly_once_across_a_kill_9_of_the_collector(stack: Stack) -> None:
    run = f"kill-{uuid.uuid4().hex[:8]}"
    total = 20_000
    stack.exec("audit", "python", "-c", PUBLISH, run, str(total))
    stack.run("kill", "-s", "SIGKILL", "audit")
    stack.run("up", "-d", "--wait", "audit", timeout=180)
    numbers = _wait(stack, run, total, timeout=120)
    assert numbers == list(range(total))
    verified = stack.run("exec", "-T", "audit", "python", "-m", "bastion_audit", "verify")
    assert json.loads(verified.stdout)["ok"] is True
