"""Disk full on the audit volume, under the steady load, counted.

audit's store runs on a 16 MiB tmpfs (compose.diskfull.yaml) that the test fills to the
last byte for 10 s. Expected: the collector stops storing and says why (its log, and
/readyz answers 503 naming the full disk); tool calls are still answered (their events
wait in the stream); nothing is stored or acknowledged while the disk is full; once the
filler is removed the collector catches up by itself, every answered request has exactly
one event, and the chain verifies.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.faults.load import Load, assert_every_event_once, events_per_request, summary
from tests.faults.test_faults import OUTAGE, RECOVERY, _report, _verify
from tests.integration.audit_api import AuditApi, now
from tests.integration.conftest import Stack

pytestmark = pytest.mark.anyio

OVERRIDE = Path(__file__).with_name("compose.diskfull.yaml")


def _compose(stack: Stack, *args: str) -> None:
    subprocess.run(  # noqa: S603 - fixed argv, no shell
        stack.compose_cmd(*args),
        check=True, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def _anchor(stack: Stack, value: str | None = None) -> str:
    """The chain's anchor in Redis (`audit:anchor`), set to `value` first when given."""
    argv = ["redis-cli", "--user", "audit", "--no-auth-warning"]
    if value is not None:
        stack.run("exec", "-T", "-e", f"REDISCLI_AUTH={stack.env['REDIS_PASSWORD_AUDIT']}",
                  "redis", *argv, "SET", "audit:anchor", value)  # fmt: skip
    return stack.run(
        "exec", "-T", "-e", f"REDISCLI_AUTH={stack.env['REDIS_PASSWORD_AUDIT']}",
        "redis", *argv, "GET", "audit:anchor",
    ).stdout.strip()  # fmt: skip


def _swap_audit(stack: Stack, *files: str, anchor: str) -> str:
    """audit anew with `files` over the stack's own, its anchor in Redis set to `anchor`
    while it is down; the anchor the one before left. The container is removed first,
    since a recreated one keeps the mounts of the one it replaces (Compose carries
    volumes over by target), which would leave /data on the host's disk. The anchor
    follows the store: the tmpfs store starts empty, and an anchor naming the other
    store's records would (rightly) make verify call it cut."""
    _compose(stack, *files, "rm", "--stop", "--force", "audit")
    left = _anchor(stack)
    _anchor(stack, anchor)
    try:
        _compose(stack, *files, "up", "--detach", "--wait", "audit")
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"{exc.stderr}\n{stack.logs('audit')[-3000:]}") from None
    return left


async def _ready(stack: Stack) -> tuple[int, dict[str, Any]]:
    async with httpx2.AsyncClient(timeout=5) as http:
        reply = await http.get(f"{stack.urls['audit']}/readyz")
    return reply.status_code, reply.json()


async def _stored(audit: AuditApi, load: Load, since: Any) -> int:
    stored = 0
    for name, _ in load.principals:
        stored += len(await audit.events("tool.called", since=since, principal=name))
    return stored


async def test_a_full_audit_disk_acknowledges_nothing_and_catches_up(
    stack: Stack, audit: AuditApi
) -> None:
    saved = _swap_audit(stack, "-f", str(OVERRIDE), anchor="")
    try:
        # Never fill a disk that is not the small tmpfs: the host's would be next.
        mounted = stack.exec("audit", "df", "-P", "/data").splitlines()[-1].split()
        assert mounted[0] == "tmpfs" and int(mounted[1]) <= 16 * 1024, mounted
        since = now()
        load = await Load.start(stack)
        await audit.renew()
        done = anyio.Event()
        seen: dict[str, Any] = {}

        async def fault() -> None:
            await anyio.sleep(3)
            # head ends with ENOSPC once the 16 MiB tmpfs is full: that is the point.
            await anyio.to_thread.run_sync(
                lambda: stack.run(
                    "exec",
                    "-T",
                    "audit",
                    "sh",
                    "-c",
                    "head -c 33554432 /dev/zero > /data/fill || true",
                )  # fmt: skip
            )
            seen["filled"] = time.monotonic()
            with anyio.fail_after(10):
                while (await _ready(stack))[0] != 503:
                    await anyio.sleep(0.2)
            seen["unready_after_s"] = round(time.monotonic() - seen["filled"], 2)
            seen["readyz"] = (await _ready(stack))[1]
            seen["stored_at_stall"] = await _stored(audit, load, since)
            await anyio.sleep(OUTAGE)
            seen["stored_before_space"] = await _stored(audit, load, since)
            seen["calls_while_full"] = len(load.between(seen["filled"], time.monotonic()))
            seen["ran_while_full"] = sum(
                c.ran for c in load.between(seen["filled"], time.monotonic())
            )
            await anyio.to_thread.run_sync(
                lambda: stack.run("exec", "-T", "audit", "rm", "-f", "/data/fill")
            )
            freed = time.monotonic()
            with anyio.fail_after(30):
                while (await _ready(stack))[0] != 200:
                    await anyio.sleep(0.1)
            seen["ready_again_s"] = round(time.monotonic() - freed, 2)
            await anyio.sleep(3)
            done.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(load.run, done)
            tasks.start_soon(fault)
        counts, expected = await events_per_request(audit, load, since)
        figures = summary(counts, load, expected)
        verified = await _verify(stack, audit)
        logs = stack.logs("audit")
        figures.update(
            {k: v for k, v in seen.items() if k not in ("filled", "readyz")},
            readyz_collector=seen["readyz"]["checks"]["collector"],
            statuses=load.statuses(load.calls),
            errors=sorted({c.error for c in load.calls if c.error}),
            verify_ok=verified["ok"],
            verify_problems=verified["problems"][:5],
        )
        _report("audit disk full 10 s (16 MiB tmpfs filled)", figures)
        assert "disk is full" in seen["readyz"]["checks"]["collector"], figures
        assert "audit.collector_stalled" in logs and "audit.collector_resumed" in logs
        # Stored nothing while full (a batch may have landed as the disk filled).
        assert seen["stored_before_space"] == seen["stored_at_stall"], figures
        assert seen["ran_while_full"] > 0, figures  # the tools kept answering
        assert seen["ready_again_s"] <= RECOVERY, figures
        assert_every_event_once(figures, expected)
        assert verified["ok"] is True, figures
        assert "Traceback" not in logs
    finally:
        _swap_audit(stack, anchor=saved)
