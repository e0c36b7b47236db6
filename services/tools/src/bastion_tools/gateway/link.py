"""One upstream MCP server: its connection (the official SDK's client, streamable HTTP
over httpx2), its listing, and every call made to it.

A supervisor task keeps one client session open, lists the upstream's tools when it
connects, on `notifications/tools/list_changed` and every `refresh_seconds`, and
reconnects with backoff when the session breaks. Calls pass a circuit breaker, a cap on
concurrent calls and a timeout, each failure answered with a JSON-RPC error naming the
upstream (`errors`). Only the policy file's headers reach the upstream: the caller's
token never does (the guard removed it from the request before the SDK saw it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Literal

import anyio
import httpx2
import mcp_types as types
from mcp.client import Client, Transport
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST, REQUEST_TIMEOUT, CallToolResult
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from bastion_common.logging import get_logger
from bastion_common.policyfile import UpstreamPolicy
from bastion_tools.gateway.breaker import Breaker
from bastion_tools.gateway.errors import (
    UPSTREAM_MALFORMED,
    UPSTREAM_UNAVAILABLE,
    UpstreamCallError,
    refused,
)

__all__ = ["Listing", "UpstreamLink"]

log = get_logger(__name__)

CALLS = Counter("bastion_gateway_calls", "Calls forwarded to upstreams", ["upstream", "outcome"])
LATENCY = Histogram(
    "bastion_gateway_call_seconds",
    "Latency of calls forwarded to upstreams",
    ["upstream"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UP = Gauge("bastion_gateway_upstream_up", "1 while the upstream's session is open", ["upstream"])

_MAX_PAGES = 50
_MAX_BACKOFF = 10.0

Listing = Callable[["UpstreamLink", list[types.Tool]], Awaitable[None]]


class UpstreamLink:
    reports_up = True  # sets bastion_gateway_upstream_up (a per-principal process does not)

    def __init__(self, name: str, policy: UpstreamPolicy, on_listing: Listing) -> None:
        self.name = name
        self.policy = policy
        self.state: Literal["connecting", "up", "down"] = "connecting"
        self.reason: str | None = None
        self.breaker = Breaker(policy.breaker_failures, policy.breaker_reset_seconds)
        self._on_listing = on_listing
        self._slots = anyio.Semaphore(policy.max_concurrency)
        self._client: Client | None = None
        self._wake = anyio.Event()
        self._broken = False
        self.settled = anyio.Event()  # set once the first attempt connected or failed
        self._listing = anyio.Lock()  # one listing at a time: the last one listed wins

    # --- the supervisor ------------------------------------------------------------

    async def run(self) -> None:
        """Keep a session open until cancelled (the lifespan's task group does that)."""
        delay = 0.25
        while True:
            opened = time.monotonic()
            try:
                await self._session()
            except Exception as exc:  # noqa: BLE001 - top-level loop: any failure reconnects
                self._down(_why(exc))
            if time.monotonic() - opened > 30:
                delay = 0.25  # it was up for a while: this is a new outage
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _open(self, stack: AsyncExitStack) -> Transport:
        """The transport to the upstream: streamable HTTP (`stdio.StdioLink` runs a child)."""
        headers = {k: v.get_secret_value() for k, v in self.policy.secret_headers.items()}
        timeout = httpx2.Timeout(self.policy.timeout_seconds, read=300.0)
        http = await stack.enter_async_context(
            create_mcp_http_client(headers=headers, timeout=timeout)
        )
        return streamable_http_client(self.policy.url or "", http_client=http)

    async def _session(self) -> None:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                Client(
                    await self._open(stack),
                    cache=None,
                    message_handler=self._on_message,
                    read_timeout_seconds=self.policy.timeout_seconds,
                )
            )
            self._client, self._broken = client, False
            await self.refresh()
            self.state, self.reason = "up", None
            self.settled.set()
            if self.reports_up:
                UP.labels(self.name).set(1)
            log.info("gateway.upstream_up", upstream=self.name)
            while not self._broken:
                with anyio.move_on_after(self.policy.refresh_seconds):
                    await self._wake.wait()
                self._wake = anyio.Event()
                if not self._broken:
                    await self.refresh()
        self._down("the session broke")

    def _down(self, reason: str) -> None:
        self._client = None
        if self.state != "down" or self.reason != reason:
            log.warning("gateway.upstream_down", upstream=self.name, reason=reason)
        self.state, self.reason = "down", reason
        self.settled.set()
        if self.reports_up:
            UP.labels(self.name).set(0)

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._wake.set()
        elif isinstance(message, Exception):
            self._reconnect()

    def _reconnect(self) -> None:
        self._broken = True
        self._wake.set()

    async def refresh(self) -> None:
        """List every tool of the upstream (all pages) and hand the listing on."""
        client = self._client
        if client is None:
            return
        async with self._listing:
            tools: list[types.Tool] = []
            cursor: str | None = None
            with anyio.fail_after(self.policy.timeout_seconds):
                for _ in range(_MAX_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
            await self._on_listing(self, tools)

    # --- calls ---------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await self._call(tool, arguments)
            outcome = "error_result" if result.is_error else "success"
            return result
        except UpstreamCallError as exc:
            outcome = exc.reason
            raise
        finally:
            CALLS.labels(self.name, outcome).inc()
            LATENCY.labels(self.name).observe(time.perf_counter() - started)

    async def _call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        client = self._client
        if client is None:
            raise self._unavailable(f"not connected ({self.reason or 'connecting'})", "down")
        if not self.breaker.allow():
            wait = self.breaker.retry_after()
            raise self._unavailable(f"failing; circuit open, retry in {wait:.0f}s", "circuit_open")
        timeout = self.policy.timeout_seconds
        try:
            with anyio.fail_after(timeout):
                async with self._slots:
                    # The request itself, not `call_tool`: results are checked against
                    # the pinned definition (`results`), not the SDK's latest listing.
                    result = await client.session.send_request(
                        types.CallToolRequest(
                            params=types.CallToolRequestParams(name=tool, arguments=arguments)
                        ),
                        CallToolResult,
                        request_read_timeout_seconds=timeout,
                    )
        except TimeoutError:
            self.breaker.failed()
            raise self._unavailable(f"did not answer within {timeout:g}s", "timeout") from None
        except MCPError as exc:
            if _transport_failure(exc):
                self.breaker.failed()
                self._reconnect()
                raise self._unavailable("the connection failed", "unreachable") from None
            if _unreadable(exc):
                self.breaker.failed()
                raise self._malformed() from None
            self.breaker.succeeded()  # it answered: alive, the call was refused
            raise refused(self.name, exc.code, exc.message) from None
        except (ValidationError, RuntimeError, ValueError):
            self.breaker.failed()
            raise self._malformed() from None
        except Exception as exc:  # noqa: BLE001 - transport failures of any kind
            self.breaker.failed()
            self._reconnect()
            log.warning("gateway.call_failed", upstream=self.name, error=type(exc).__name__)
            raise self._unavailable("the connection failed", "unreachable") from None
        self.breaker.succeeded()
        return result

    def _unavailable(self, message: str, reason: str) -> UpstreamCallError:
        return UpstreamCallError(UPSTREAM_UNAVAILABLE, self.name, message, reason)

    def _malformed(self) -> UpstreamCallError:
        return UpstreamCallError(
            UPSTREAM_MALFORMED, self.name, "sent a malformed result", "malformed"
        )


def _transport_failure(exc: MCPError) -> bool:
    if exc.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
        return True
    return exc.code == INVALID_REQUEST and exc.message == "Session terminated"


# The errors the SDK's streamable HTTP client makes up when the answer is not MCP at all
# (an HTML page, broken JSON or SSE, a 5xx without a JSON-RPC body): the upstream chose
# none of them, so they are its malformed answer, not a refusal to pass on.
_UNREADABLE = (
    "Failed to parse ",
    "Unexpected content type",
    "Server returned an error response",
)


def _unreadable(exc: MCPError) -> bool:
    return exc.message.startswith(_UNREADABLE)


def _why(exc: BaseException) -> str:
    """A short reason for the readiness report: the exception's kind, never its text
    (it may quote a header or a URL with a secret)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return type(exc).__name__
