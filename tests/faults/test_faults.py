"""Faults under a steady load, against the compose stack, checked by counting.

- Redis stopped for 10 s, then started (and, separately, restarted with its data lost):
  no call runs while its checks cannot be made (503, never a result), every service
  recovers by itself within 5 s of Redis returning, and every answered request has
  exactly one audit event in the store (spooled ones included).
- The audit collector killed with SIGKILL mid-load, then started: nothing lost, nothing
  twice, the chain verifies.

Each case prints what it measured.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest

from tests.faults.load import Load, assert_every_event_once, events_per_request, summary
from tests.integration.audit_api import AuditApi, now
from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp
from tests.integration.oauth import OAuthClient
from tests.integration.test_attacks import admin, create_user

pytestmark = pytest.mark.anyio

OUTAGE = 10.0  # seconds
MARGIN = 1.0  # calls this close to a stop or start may have been decided either side
RECOVERY = 5.0  # seconds: the bound


async def _verify(stack: Stack, audit: AuditApi) -> dict[str, Any]:
    async with httpx2.AsyncClient(timeout=30) as http:
        verified = await http.get(
            f"{stack.urls['audit']}/v1/verify",
            headers={"Authorization": f"Bearer {await audit.token()}"},
        )
    assert verified.status_code == 200, verified.text
    body: dict[str, Any] = verified.json()
    return body


def _report(name: str, figures: dict[str, object]) -> None:
    print(f"\nfault {name}: {json.dumps(figures)}")  # noqa: T201 - the suite's figures


Step = Callable[[], object]


async def _outage(load: Load, stop: Step, start: Step) -> dict[str, float]:
    """Load for 3 s, `stop` for OUTAGE seconds, `start`, load until calls run again
    (at most 30 s) plus 3 s; the times (monotonic) of each step."""
    done = anyio.Event()
    times: dict[str, float] = {}

    async def fault() -> None:
        await anyio.sleep(3)
        times["stopping"] = time.monotonic()
        await anyio.to_thread.run_sync(stop)
        times["stopped"] = time.monotonic()
        await anyio.sleep(OUTAGE)
        times["starting"] = time.monotonic()
        await anyio.to_thread.run_sync(start)
        times["started"] = time.monotonic()
        with anyio.move_on_after(30):
            while not any(c.ran and c.sent > times["started"] for c in load.calls):
                await anyio.sleep(0.1)
        times["recovered"] = min(
            (c.done for c in load.calls if c.ran and c.sent > times["started"]), default=0.0
        )
        await anyio.sleep(3)
        done.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(load.run, done)
        tasks.start_soon(fault)
    return times


async def _check_outage(name: str, stack: Stack, audit: AuditApi, stop: Step,
                        start: Step) -> None:  # fmt: skip
    since = now()
    load = await Load.start(stack)
    await audit.renew()  # a fresh token: reading the record must not need a login later
    times = await _outage(load, stop, start)
    during = load.between(times["stopped"] + MARGIN, times["starting"])
    counts, expected = await events_per_request(audit, load, since)
    figures = summary(counts, load, expected)
    recovery = times["recovered"] - times["started"] if times["recovered"] else None
    figures.update(
        during_outage=load.statuses(during),
        ran_during_outage=sum(c.ran for c in during),
        recovery_s=round(recovery, 2) if recovery is not None else None,
        all_statuses=load.statuses(load.calls),
    )
    _report(name, figures)
    assert during, "the load sent nothing while Redis was down"
    assert figures["ran_during_outage"] == 0  # fail closed
    assert {c.status for c in during} <= {503}, figures["during_outage"]
    assert recovery is not None and recovery <= RECOVERY, figures
    assert_every_event_once(figures, expected)


async def test_the_collector_killed_mid_load_loses_nothing(stack: Stack, audit: AuditApi) -> None:
    since = now()
    load = await Load.start(stack)
    done = anyio.Event()

    async def fault() -> None:
        await anyio.sleep(3)
        await anyio.to_thread.run_sync(lambda: stack.run("kill", "--signal", "KILL", "audit"))
        await anyio.sleep(3)
        await anyio.to_thread.run_sync(lambda: stack.run("up", "--detach", "--wait", "audit"))
        await anyio.sleep(3)
        done.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(load.run, done)
        tasks.start_soon(fault)
    counts, expected = await events_per_request(audit, load, since)
    figures = summary(counts, load, expected)
    verified = await _verify(stack, audit)
    figures.update(statuses=load.statuses(load.calls), verify=verified)
    _report("collector SIGKILL", figures)
    assert_every_event_once(figures, expected)
    assert verified["ok"] is True, figures


async def test_two_collectors_at_once_store_one_chain(stack: Stack, audit: AuditApi) -> None:
    since = now()
    load = await Load.start(stack)
    second = f"{stack.project}-audit-second"
    done = anyio.Event()

    async def fault() -> None:
        await anyio.to_thread.run_sync(
            lambda: stack.run("run", "--detach", "--no-deps", "--name", second, "audit")
        )
        await anyio.sleep(10)
        done.set()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(load.run, done)
            tasks.start_soon(fault)
        counts, expected = await events_per_request(audit, load, since)
    finally:
        subprocess.run(["docker", "rm", "--force", second], capture_output=True, check=False)  # noqa: S603,S607
    figures = summary(counts, load, expected)
    verified = await _verify(stack, audit)
    figures.update(statuses=load.statuses(load.calls), verify=verified)
    _report("two collectors", figures)
    assert_every_event_once(figures, expected)
    assert verified["ok"] is True, figures


async def test_auth_stopped_tools_keep_validating_and_sign_in_returns(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    load = await Load.start(stack)
    times = await _outage(
        load,
        lambda: stack.run("stop", "auth"),
        lambda: stack.run("up", "--detach", "--wait", "auth"),
    )
    during = load.between(times["stopped"] + MARGIN, times["starting"])
    # Back without restarting anything else: a new person signs in and calls a tool.
    fresh = await Load.start(stack, users=1)
    async with httpx2.AsyncClient(timeout=10) as http:
        mcp = McpHttp(f"{stack.urls['tools']}/mcp", fresh.principals[0][1])
        await mcp.initialize(http)
        after = await mcp.call_tool(http, "get_weather", {"city": "Oslo"})
    counts, expected = await events_per_request(audit, load, since)
    figures = summary(counts, load, expected)
    figures.update(during_outage=load.statuses(during), new_sign_in_call=after.status)
    _report("auth stopped 10 s", figures)
    assert during and all(c.ran for c in during), figures  # cached keys: every call runs
    assert after.status == 200 and not after.result.get("isError"), figures
    assert figures["lost"] == 0 and figures["doubled"] == 0, figures


async def test_tools_killed_mid_load(stack: Stack, audit: AuditApi) -> None:
    """The clients get errors, then sessions anew; the buckets live in Redis, so nobody's
    budget is lost. Events tools held in memory for batching (20 ms) die with it: that
    window is measured, and everything answered before it is in the record."""
    since = now()
    load = await Load.start(stack)
    times = await _outage(
        load,
        lambda: stack.run("kill", "--signal", "KILL", "tools"),
        lambda: stack.run("up", "--detach", "--wait", "tools"),
    )
    counts, expected = await events_per_request(audit, load, since, timeout=20)
    figures = summary(counts, load, expected)
    before = [c for c in load.calls if c.status == 200 and c.done < times["stopping"] - MARGIN]
    missing_before = [c for c in before if c.request_id not in counts]
    missing_any = [
        c for c in load.calls
        if c.status == 200 and c.request_id not in counts and c.done < times["stopping"]
    ]  # fmt: skip
    recovery = times["recovered"] - times["started"] if times["recovered"] else None
    figures.update(
        statuses=load.statuses(load.calls),
        recovery_s=round(recovery, 2) if recovery is not None else None,
        missing_answered_over_1s_before_kill=len(missing_before),
        # Where the missing events were answered, in seconds before the kill.
        missing_answered_s_before_kill=sorted(
            {round(times["stopping"] - c.done, 1) for c in missing_any}
        )[-5:],
        tools_spooled="audit.spooling" in stack.logs("tools"),
    )
    _report("tools SIGKILL", figures)
    assert not missing_before, figures
    assert recovery is not None and recovery <= RECOVERY, figures
    assert figures["doubled"] == 0, figures


async def _admin_headers(stack: Stack) -> dict[str, str]:
    client = await OAuthClient.register(stack.urls["auth"], "fault-admin")
    root = await client.token(*admin(stack), resource=f"{stack.urls['auth']}/admin",
                              scope="admin:users")  # fmt: skip
    return {"Authorization": f"Bearer {root['access_token']}"}


async def _is_disabled(stack: Stack, username: str, token: str) -> tuple[bool, int]:
    """What auth's admin API says of the person, and what tools answers their token."""
    async with httpx2.AsyncClient(timeout=10) as http:
        listed = await http.get(
            f"{stack.urls['auth']}/admin/users", headers=await _admin_headers(stack)
        )
        person = next(u for u in listed.json()["users"] if u["username"] == username)
        status = (await McpHttp(f"{stack.urls['tools']}/mcp", token).initialize(http)).status
    return bool(person["disabled"]), status


async def _disabled_person(stack: Stack) -> tuple[str, str]:
    """A person with a token for tools, then disabled by the admin: (name, token)."""
    username, password = await create_user(stack, "premium")
    client = await OAuthClient.register(stack.urls["auth"], "fault-disabled")
    body = await client.token(
        username, password, resource=f"{stack.urls['tools']}/mcp", scope="weather:read"
    )
    async with httpx2.AsyncClient(timeout=10) as http:
        done = await http.patch(
            f"{stack.urls['auth']}/admin/users/{username}", json={"disabled": True},
            headers=await _admin_headers(stack),
        )  # fmt: skip
        assert done.status_code == 200, done.text
    token = str(body["access_token"])
    assert await _is_disabled(stack, username, token) == (True, 401)
    return username, token


async def test_redis_stopped_for_ten_seconds(stack: Stack, audit: AuditApi) -> None:
    """Also: a person disabled before the outage is still disabled after it (Redis comes
    back from its append-only file; redis/redis#14541 once dropped every MULTI/EXEC)."""
    username, token = await _disabled_person(stack)
    await _check_outage(
        "redis stopped 10 s", stack, audit,
        lambda: stack.run("stop", "redis"), lambda: stack.run("start", "redis"),
    )  # fmt: skip
    assert await _is_disabled(stack, username, token) == (True, 401)


async def test_redis_restarted_with_its_data_lost(stack: Stack, audit: AuditApi) -> None:
    """Last: users, sessions, keys and buckets are gone afterwards (tokens already issued
    are still verified locally against the cached keys)."""

    def lose_everything() -> None:
        stack.run("rm", "--stop", "--force", "redis")
        subprocess.run(  # noqa: S603 - fixed argv
            ["docker", "volume", "rm", f"{stack.project}_redis-data"],  # noqa: S607
            check=True, capture_output=True,
        )  # fmt: skip

    await _check_outage(
        "redis restarted, data lost", stack, audit,
        lose_everything, lambda: stack.run("up", "--detach", "--wait", "redis"),
    )  # fmt: skip
