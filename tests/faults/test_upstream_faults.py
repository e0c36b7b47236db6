"""Gateway upstream faults under the steady load, counted.

The `time` upstream of deploy/compose.test.yaml frozen with `docker pause` (it holds its
connections and answers nothing: a hang, not a refusal) for 10 s while each principal
calls a built-in tool, `time` and the other upstream (`everything`) at once. Expected:
every `time` call during the hang is answered with a JSON-RPC error naming the upstream
within its timeout (3 s in the test policy) plus a margin, the breaker opens (later calls
are refused at once, not after the timeout), the built-in tool and `everything` keep
answering, `time` answers again within a few seconds of being unpaused, and every call
has exactly one audit event.
"""

from __future__ import annotations

import json
import time

import anyio
import pytest

from tests.faults.load import Call, Load, events_per_request, summary
from tests.integration.audit_api import AuditApi, now
from tests.integration.conftest import Stack

pytestmark = pytest.mark.anyio

HANG = 10.0  # seconds
TIMEOUT = 3.0  # time's timeout_seconds in deploy/upstreams/policy.test.yaml
SLACK = 1.5  # scheduling on a shared 2-core machine
MIX = (
    ("get_weather", {"city": "Paris"}),
    ("time_get_current_time", {"timezone": "UTC"}),
    ("ev_echo", {"message": "steady"}),
)


def _report(name: str, figures: dict[str, object]) -> None:
    print(f"\nfault {name}: {json.dumps(figures)}")  # noqa: T201 - the suite's figures


def _of(calls: list[Call], tool: str) -> list[Call]:
    return [c for c in calls if c.tool == tool]


async def test_a_hanging_upstream_is_cut_off_by_its_timeout_and_breaker(
    stack: Stack, audit: AuditApi
) -> None:
    since = now()
    load = await Load.start(stack, scope="weather:read time:read ev:read")
    load.mix = MIX
    await audit.renew()
    done = anyio.Event()
    times: dict[str, float] = {}

    async def fault() -> None:
        await anyio.sleep(3)
        await anyio.to_thread.run_sync(lambda: stack.run("pause", "time"))
        times["paused"] = time.monotonic()
        await anyio.sleep(HANG)
        times["unpausing"] = time.monotonic()
        try:
            await anyio.to_thread.run_sync(lambda: stack.run("unpause", "time"))
        finally:
            times["unpaused"] = time.monotonic()
        with anyio.move_on_after(30):
            while not any(
                c.ran and c.sent > times["unpaused"] for c in _of(load.calls, MIX[1][0])
            ):
                await anyio.sleep(0.1)
        await anyio.sleep(3)
        done.set()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(load.run, done)
            tasks.start_soon(fault)
    finally:
        if "unpausing" not in times and "paused" in times:
            stack.run("unpause", "time")  # never leave the upstream frozen for the next case

    during = load.between(times["paused"], times["unpausing"])
    hung = _of(during, "time_get_current_time")
    slowest = max((c.done - c.sent for c in hung), default=0.0)
    fast_refusals = [c for c in hung if c.done - c.sent < 0.5]
    back = [c for c in _of(load.calls, "time_get_current_time")
            if c.ran and c.sent > times["unpaused"]]  # fmt: skip
    recovery = min(c.done for c in back) - times["unpaused"] if back else None
    counts, expected = await events_per_request(audit, load, since)
    figures = summary(counts, load, expected)
    figures.update(
        time_calls_during_hang=len(hung),
        time_errors=sorted({c.error.split(":")[0] for c in hung}),
        time_slowest_answer_s=round(slowest, 2),
        time_refused_at_once_breaker_open=len(fast_refusals),
        builtin_during_hang=load.statuses(_of(during, "get_weather")),
        builtin_ran_during_hang=sum(c.ran for c in _of(during, "get_weather")),
        everything_during_hang=load.statuses(_of(during, "ev_echo")),
        everything_ran_during_hang=sum(c.ran for c in _of(during, "ev_echo")),
        recovery_s=round(recovery, 2) if recovery is not None else None,
    )
    _report("upstream hangs 10 s (docker pause time)", figures)
    assert hung, figures
    assert all(not c.ran and c.error.startswith("-32010 upstream time") for c in hung), [
        c.error for c in hung
    ]
    assert slowest <= TIMEOUT + SLACK, figures
    assert fast_refusals, figures  # the breaker opened: refused without waiting
    for tool in ("get_weather", "ev_echo"):
        others = _of(during, tool)
        assert others and all(c.ran for c in others), figures
    assert recovery is not None and recovery <= 10, figures
    assert figures["lost"] == 0 and figures["doubled"] == 0, figures
    assert figures["events_stored"] == expected, figures
