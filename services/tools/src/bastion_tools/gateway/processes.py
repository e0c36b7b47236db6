"""Isolation between principals for a stdio upstream (`isolation: per-principal`): one
process per principal (the token's subject), started on its first call, stopped after
`idle_timeout_seconds` without one, at most `max_processes` at once (docs/gateway.md).

The upstream's tools come from one more process of its own, the discovery process (in
its own directory, never serving a call): its listing is pinned and served like any
upstream's, and every principal's call is checked against those pinned definitions
(`forward`). Past the cap a call gets `-32010 upstream <name>: ... max_processes`, and
the process of someone else is never borrowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup
from mcp_types import CallToolResult
from prometheus_client import Gauge

from bastion_common.logging import get_logger
from bastion_common.policyfile import UpstreamPolicy
from bastion_tools.gateway.errors import UPSTREAM_UNAVAILABLE, UpstreamCallError
from bastion_tools.gateway.link import CALLS, Listing, UpstreamLink
from bastion_tools.gateway.stdio import DEFAULT_PATH, StdioLink, process_directory

__all__ = ["PrincipalProcesses"]

log = get_logger(__name__)

PROCESSES = Gauge(
    "bastion_gateway_processes", "Per-principal stdio processes running", ["upstream"]
)


@dataclass
class _Process:
    link: StdioLink
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    last_used: float = 0.0
    in_flight: int = 0
    reaped: bool = False


async def _ignore(_link: UpstreamLink, _tools: list[types.Tool]) -> None:
    """A principal's own listing: the pinned definitions are the discovery process's."""


class PrincipalProcesses:
    def __init__(
        self,
        name: str,
        policy: UpstreamPolicy,
        on_listing: Listing,
        *,
        root: Path,
        path: str = DEFAULT_PATH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy
        self._root = root
        self._path = path
        self._clock = clock
        self.discovery = StdioLink(
            name, policy, on_listing, directory=root / name / "discovery", path=path
        )
        self.running: dict[str, _Process] = {}
        self._tasks: TaskGroup | None = None
        self._starting = anyio.Lock()
        self._stopping = 0  # reaped, still shutting down: they count against the cap

    async def run(self) -> None:
        """The discovery process and the idle reaper, until cancelled; every principal's
        process runs in this task group, so cancelling it stops them all."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            tasks.start_soon(self.discovery.run)
            tasks.start_soon(self._reap)
            await anyio.sleep_forever()

    async def call(self, tool: str, arguments: dict[str, Any], subject: str) -> CallToolResult:
        process = await self._process(subject)  # in_flight counted: it is not reaped
        try:
            # Its first connection (or the failure of it) before the call; the link's own
            # errors name the upstream when it did not come up in time.
            with anyio.move_on_after(self.policy.timeout_seconds):
                await process.link.settled.wait()
            return await process.link.call(tool, arguments)
        finally:
            process.in_flight -= 1
            process.last_used = self._clock()

    async def _process(self, subject: str) -> _Process:
        """The principal's own process, started on first use (within the cap)."""
        async with self._starting:
            process = self.running.get(subject)
            if process is None:
                count = len(self.running) + self._stopping
                if count >= self.policy.max_processes or self._tasks is None:
                    CALLS.labels(self.name, "process_cap").inc()
                    raise UpstreamCallError(
                        UPSTREAM_UNAVAILABLE,
                        self.name,
                        f"{count} processes already run for other principals,"
                        f" the most it may run (max_processes {self.policy.max_processes});"
                        " try again later",
                        "process_cap",
                    )
                directory = process_directory(self._root, self.name, subject)
                link = StdioLink(self.name, self.policy, _ignore, directory=directory,
                                 path=self._path, reports_up=False)  # fmt: skip
                process = self.running[subject] = _Process(link, last_used=self._clock())
                self._tasks.start_soon(self._supervise, subject, process)
                PROCESSES.labels(self.name).set(len(self.running))
                log.info("gateway.process_started", upstream=self.name, directory=directory.name)
            process.in_flight += 1
        return process

    async def _supervise(self, subject: str, process: _Process) -> None:
        try:
            with process.scope:
                await process.link.run()
        finally:
            if process.reaped:
                self._stopping -= 1
            elif self.running.get(subject) is process:
                del self.running[subject]
            PROCESSES.labels(self.name).set(len(self.running))
            log.info("gateway.process_stopped", upstream=self.name,
                     directory=process.link.directory.name)  # fmt: skip

    async def _reap(self) -> None:
        """Stop the processes idle for longer than the idle timeout."""
        idle = self.policy.idle_timeout_seconds
        while True:
            await anyio.sleep(min(idle / 4, 5.0))
            now = self._clock()
            for subject, process in list(self.running.items()):
                if process.in_flight == 0 and now - process.last_used >= idle:
                    # Out of `running` at once (the next call starts a new one), counted
                    # against the cap until it has stopped.
                    del self.running[subject]
                    process.reaped = True
                    self._stopping += 1
                    process.scope.cancel()

    def report(self) -> str:
        running = len(self.running) + self._stopping
        return f"{running} of {self.policy.max_processes} per-principal processes"
