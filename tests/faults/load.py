"""A steady load of tool calls from several principals, every call recorded, and the
count of audit events per call afterwards.

Each call carries an X-Request-ID of its own, and tools puts the request id in the event
it records: `tool.called` for a call that ran, `ratelimit.refused` for one refused
because the limiter could not be asked (503) or its bucket was empty (429). So after a
fault, "every audit event of every request is in the store exactly once" is counted:
one event per request id, none missing, none twice.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import httpx2

from tests.integration.audit_api import AuditApi
from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp
from tests.integration.oauth import OAuthClient
from tests.integration.test_attacks import create_user

EVENT_TYPES = ("tool.called", "ratelimit.refused")


@dataclass
class Call:
    request_id: str
    principal: str
    sent: float  # time.monotonic()
    done: float
    status: int
    ran: bool  # 200 with a result that is not an error: the tool ran and answered
    tool: str = "get_weather"
    error: str = ""  # the JSON-RPC error's code and message, when there was one


@dataclass
class Load:
    stack: Stack
    principals: list[tuple[str, str]]  # (username, access token for tools)
    pause: float = 0.02
    # What each principal's workers call, one tool (and its arguments) per worker.
    mix: tuple[tuple[str, dict[str, Any]], ...] = (("get_weather", {"city": "Paris"}),) * 2
    calls: list[Call] = field(default_factory=list)
    _running: bool = True

    @classmethod
    async def start(cls, stack: Stack, users: int = 3, scope: str = "weather:read") -> Load:
        principals = []
        for _ in range(users):
            username, password = await create_user(stack, "premium")
            client = await OAuthClient.register(stack.urls["auth"], "fault-load")
            body = await client.token(
                username, password, resource=f"{stack.urls['tools']}/mcp", scope=scope
            )
            principals.append((username, str(body["access_token"])))
        return cls(stack, principals)

    async def run(self, seconds_or_until: anyio.Event) -> None:
        """Call until `seconds_or_until` is set, one worker per principal and tool of `mix`."""
        async with anyio.create_task_group() as tasks:
            for username, token in self.principals:
                for tool, arguments in self.mix:
                    tasks.start_soon(
                        self._worker, username, token, tool, arguments, seconds_or_until
                    )

    async def _worker(
        self, username: str, token: str, tool: str, arguments: dict[str, Any], stop: anyio.Event
    ) -> None:
        mcp = McpHttp(f"{self.stack.urls['tools']}/mcp", token)
        async with httpx2.AsyncClient(timeout=10) as http:
            while not stop.is_set():
                if mcp.session_id is None:
                    with anyio.move_on_after(5):
                        await mcp.initialize(http)
                    if mcp.session_id is None:
                        await anyio.sleep(0.2)
                        continue
                rid = secrets.token_hex(16)
                mcp.headers["X-Request-ID"] = rid
                sent = time.monotonic()
                error = ""
                try:
                    reply = await mcp.call_tool(http, tool, arguments)
                    status = reply.status
                    ran = status == 200 and reply.body is not None and "result" in reply.body \
                        and not reply.body["result"].get("isError")  # fmt: skip
                    if isinstance(reply.error, dict):
                        error = f"{reply.error.get('code')} {reply.error.get('message')}"
                    elif reply.error:  # an HTTP error's body (OAuth style): its text
                        error = f"{status} {reply.error}"
                except httpx2.HTTPError:
                    status, ran = 0, False  # no answer at all
                self.calls.append(
                    Call(rid, username, sent, time.monotonic(), status, ran, tool, error)
                )
                if status == 404:  # the session is gone (tools restarted): open another
                    mcp.session_id = None
                await anyio.sleep(self.pause)

    def between(self, start: float, end: float) -> list[Call]:
        """Calls sent and answered wholly inside [start, end] (monotonic time)."""
        return [c for c in self.calls if c.sent >= start and c.done <= end]

    def statuses(self, calls: list[Call]) -> dict[int, int]:
        return dict(sorted(Counter(c.status for c in calls).items()))


async def events_per_request(
    audit: AuditApi, load: Load, since: datetime, timeout: float = 60
) -> tuple[Counter[str], int]:
    """How many stored events carry each request id of the load, waiting until every
    request that got an answer has one (spooled events arrive late); and how many calls
    expected one."""
    expected = {c.request_id for c in load.calls if c.status in (200, 429, 503)}
    counts: Counter[str] = Counter()
    with anyio.move_on_after(timeout):
        while True:
            # Built aside and kept only once whole: the timeout may cut a round short,
            # and half a round would count a principal's events as lost.
            latest: Counter[str] = Counter()
            for type_ in EVENT_TYPES:
                for username, _ in load.principals:
                    for event in await audit.events(type_, since=since, principal=username):
                        latest[str(event.get("request_id"))] += 1
            counts = latest
            if expected <= set(counts):
                break
            await anyio.sleep(1)
    return counts, len(expected)


def summary(counts: Counter[str], load: Load, expected: int) -> dict[str, Any]:
    ours = {c.request_id for c in load.calls}
    answered = {c.request_id for c in load.calls if c.status in (200, 429, 503)}
    return {
        "requests": len(load.calls),
        "events_expected": expected,
        "events_stored": sum(n for rid, n in counts.items() if rid in ours),
        "lost": len(answered - set(counts)),
        "doubled": sum(1 for rid, n in counts.items() if rid in ours and n > 1),
        "foreign": sum(1 for rid in counts if rid not in ours),
    }


def assert_every_event_once(figures: dict[str, Any], expected: int) -> None:
    """Every answered request has exactly one event in the store: none lost, none twice."""
    assert figures["lost"] == 0 and figures["doubled"] == 0, figures
    assert figures["events_stored"] == expected, figures
