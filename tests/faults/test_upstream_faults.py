"""Gateway upstream faults under the steady load, counted: one that hangs, one that
answers garbage, one killed mid-stream.

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
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
import pytest

from tests.faults.load import Call, Load, assert_every_event_once, events_per_request, summary
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


def _all_ran(calls: list[Call], tools: tuple[str, ...], figures: dict[str, Any]) -> None:
    """Each of `tools` was called among `calls`, and every such call ran."""
    for tool in tools:
        others = _of(calls, tool)
        assert others and all(c.ran for c in others), figures


Step = Callable[[], object]


async def _under_load(
    stack: Stack, audit: AuditApi, mix: tuple[tuple[str, dict[str, Any]], ...], watched: str,
    stop: Step, start: Step,
) -> tuple[Load, dict[str, float], datetime]:  # fmt: skip
    """Load for 3 s, `stop` for HANG seconds, `start`, load until `watched` answers again
    (at most 30 s) plus 3 s; the load and the times (monotonic) of each step."""
    since = now()
    load = await Load.start(stack, scope="weather:read time:read ev:read")
    load.mix = mix
    # Breaker refusals come back at once: at the load's default pace the workers would
    # drain the principal's bucket (premium 1000, 20/s) and the fault would read as 429s.
    load.pause = 0.1
    await audit.renew()
    done = anyio.Event()
    times: dict[str, float] = {}

    async def fault() -> None:
        await anyio.sleep(3)
        await anyio.to_thread.run_sync(stop)
        times["stopped"] = time.monotonic()
        await anyio.sleep(HANG)
        times["starting"] = time.monotonic()
        await anyio.to_thread.run_sync(start)
        times["started"] = time.monotonic()
        with anyio.move_on_after(30):
            while not any(c.ran and c.sent > times["started"] for c in _of(load.calls, watched)):
                await anyio.sleep(0.1)
        await anyio.sleep(3)
        done.set()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(load.run, done)
            tasks.start_soon(fault)
    finally:
        if "stopped" in times and "starting" not in times:
            start()  # never leave the upstream down for the next case
    return load, times, since


def _recovery(load: Load, watched: str, started: float) -> float | None:
    back = [c.done for c in _of(load.calls, watched) if c.ran and c.sent > started]
    return round(min(back) - started, 2) if back else None


async def test_a_hanging_upstream_is_cut_off_by_its_timeout_and_breaker(
    stack: Stack, audit: AuditApi
) -> None:
    load, times, since = await _under_load(
        stack, audit, MIX, "time_get_current_time",
        lambda: stack.run("pause", "time"), lambda: stack.run("unpause", "time"),
    )  # fmt: skip
    during = load.between(times["stopped"], times["starting"])
    hung = _of(during, "time_get_current_time")
    slowest = max((c.done - c.sent for c in hung), default=0.0)
    fast_refusals = [c for c in hung if c.done - c.sent < 0.5]
    recovery = _recovery(load, "time_get_current_time", times["started"])
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
        recovery_s=recovery,
    )
    _report("upstream hangs 10 s (docker pause time)", figures)
    assert hung, figures
    assert all(not c.ran and c.error.startswith("-32010 upstream time") for c in hung), [
        c.error for c in hung
    ]
    assert slowest <= TIMEOUT + SLACK, figures
    assert fast_refusals, figures  # the breaker opened: refused without waiting
    _all_ran(during, ("get_weather", "ev_echo"), figures)
    assert recovery is not None and recovery <= 10, figures
    assert_every_event_once(figures, expected)


async def test_an_upstream_killed_mid_stream_fails_its_open_calls_and_nothing_else(
    stack: Stack, audit: AuditApi
) -> None:
    """`everything` SIGKILLed while its long-running operation streams progress (SSE)."""
    long_op = "ev_trigger-long-running-operation"
    mix = (
        ("get_weather", {"city": "Paris"}),
        ("time_get_current_time", {"timezone": "UTC"}),
        (long_op, {"duration": 2, "steps": 4}),
    )
    load, times, since = await _under_load(
        stack, audit, mix, long_op,
        lambda: stack.run("kill", "--signal", "KILL", "everything"),
        lambda: stack.run("up", "--detach", "--wait", "everything"),
    )  # fmt: skip
    # The calls that were streaming when the kill landed.
    cut = [c for c in _of(load.calls, long_op)
           if c.sent < times["stopped"] - 0.2 < c.done]  # fmt: skip
    during = load.between(times["stopped"], times["starting"])
    down = _of(during, long_op)
    recovery = _recovery(load, long_op, times["started"])
    counts, expected = await events_per_request(audit, load, since)
    figures = summary(counts, load, expected)
    figures.update(
        streams_cut=len(cut),
        cut_errors=sorted({c.error.split(":")[0] for c in cut}),
        cut_answered_within_s=round(max((c.done - times["stopped"] for c in cut), default=0), 2),
        everything_calls_while_down=len(down),
        builtin_while_down=load.statuses(_of(during, "get_weather")),
        time_while_down=load.statuses(_of(during, "time_get_current_time")),
        recovery_s=recovery,
    )
    _report("upstream SIGKILLed mid-stream (everything)", figures)
    assert cut, figures
    assert all(not c.ran and c.error.startswith("-32010 upstream everything") for c in cut), [
        c.error for c in cut
    ]
    assert figures["cut_answered_within_s"] <= TIMEOUT + SLACK, figures
    assert all(not c.ran and c.error.startswith("-32010 upstream everything") for c in down)
    _all_ran(during, ("get_weather", "time_get_current_time"), figures)
    assert recovery is not None and recovery <= 10, figures
    assert_every_event_once(figures, expected)


async def test_an_upstream_answering_garbage_is_malformed_and_its_breaker_opens(
    stack: Stack, audit: AuditApi
) -> None:
    """`time` answers every tools/call with an HTML page for HANG seconds (its recorder's
    garbage mode): each such call is refused as malformed (-32011) or, once the breaker has
    counted enough of them, at once with the circuit open (-32010); nothing of the page
    reaches the caller; everything else keeps answering; time answers again after."""
    load, times, since = await _under_load(
        stack, audit, MIX, "time_get_current_time",
        lambda: stack.run("exec", "time", "touch", "/tmp/garbage"),
        lambda: stack.run("exec", "time", "rm", "-f", "/tmp/garbage"),
    )  # fmt: skip
    during = load.between(times["stopped"] + 0.5, times["starting"])
    bad = _of(during, "time_get_current_time")
    kinds = sorted({c.error.split(":")[0] for c in bad})
    recovery = _recovery(load, "time_get_current_time", times["started"])
    counts, expected = await events_per_request(audit, load, since)
    figures = summary(counts, load, expected)
    figures.update(
        time_calls_during_garbage=len(bad),
        time_errors=kinds,
        malformed=sum(c.error.startswith("-32011 upstream time") for c in bad),
        refused_at_once_breaker_open=sum("circuit open" in c.error for c in bad),
        builtin_ran=sum(c.ran for c in _of(during, "get_weather")),
        everything_ran=sum(c.ran for c in _of(during, "ev_echo")),
        recovery_s=recovery,
    )
    _report("upstream answers garbage 10 s (time: an HTML page)", figures)
    assert bad and all(not c.ran for c in bad), figures
    assert kinds == ["-32010 upstream time", "-32011 upstream time"], figures
    assert all("html" not in c.error.lower() for c in bad), figures
    _all_ran(during, ("get_weather", "ev_echo"), figures)
    assert recovery is not None and recovery <= 10, figures
    assert_every_event_once(figures, expected)
