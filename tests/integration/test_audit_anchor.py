"""The audit record in the stack cannot be cut unnoticed: the newest events are deleted
from a copy of the database (with and without their checkpoints), and `verify`, run in
the audit container against the anchor in Redis and on the witness volume, fails and
names the gap. The live database is never touched."""

from __future__ import annotations

import json
import subprocess
import time

import httpx2
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

# In the audit container: copy the live store (SQLite's backup: consistent under WAL) to
# /tmp, then delete its last N events, and their checkpoints when asked.
CUT = """
import json, sqlite3, sys
cut, with_checkpoints = int(sys.argv[1]), sys.argv[2] == "yes"
live = sqlite3.connect("file:/data/audit.sqlite3?mode=ro", uri=True)
copy = sqlite3.connect("/tmp/cut.sqlite3")
live.backup(copy)
(head,) = copy.execute("SELECT MAX(seq) FROM events").fetchone()
copy.execute("DELETE FROM events WHERE seq > ?", (head - cut,))
if with_checkpoints:
    copy.execute("DELETE FROM checkpoints WHERE seq > ?", (head - cut,))
copy.commit()
print(json.dumps({"head": head, "kept": head - cut}))
"""


def _verify_copy(stack: Stack) -> dict[str, object]:
    argv = stack.compose_cmd(
        "exec", "-T", "-e", "AUDIT_DB_PATH=/tmp/cut.sqlite3", "audit",
        "python", "-m", "bastion_audit", "verify",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    assert done.returncode == 1, done.stdout + done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("with_checkpoints", ["yes", "no"])
def test_cutting_the_newest_events_is_found_and_the_gap_named(
    stack: Stack, with_checkpoints: str
) -> None:
    # Enough events to cut (each refused request is one), then a checkpoint of the head
    # now, anchored in Redis and on the witness volume.
    for _ in range(8):
        httpx2.get(f"{stack.urls['audit']}/v1/events", headers={"Authorization": "Bearer x"})
    deadline = time.monotonic() + 30
    while True:
        out = stack.exec("audit", "python", "-m", "bastion_audit", "checkpoint")
        signed = json.loads(out.strip().splitlines()[-1])  # after the audit.anchor log line
        assert signed["anchored"] is True
        anchored = json.loads(stack.exec("audit", "cat", "/witness/anchor.json"))
        if anchored["seq"] > 8 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    cut = json.loads(stack.exec("audit", "python", "-c", CUT, "5", with_checkpoints))
    assert cut["head"] >= anchored["seq"] > cut["kept"]
    result = _verify_copy(stack)
    assert result["ok"] is False
    first_bad = result["first_bad"]
    assert isinstance(first_bad, dict)
    assert first_bad["seq"] == cut["kept"] + 1
    problems = result["problems"]
    assert isinstance(problems, list)
    # The newest anchor names at least the record anchored above (the collector may have
    # anchored a later one since).
    gap = f"records {cut['kept'] + 1}.."
    named = [str(p["reason"]) for p in problems if str(p["reason"]).startswith(gap)]
    assert named and "are missing: the anchor of" in named[0], problems
    assert int(named[0].split("..")[1].split(" ")[0]) >= anchored["seq"]
    stack.exec("audit", "rm", "-f", "/tmp/cut.sqlite3")


def test_the_live_record_still_verifies(stack: Stack) -> None:
    verified = stack.run("exec", "-T", "audit", "python", "-m", "bastion_audit", "verify")
    assert json.loads(verified.stdout)["ok"] is True
