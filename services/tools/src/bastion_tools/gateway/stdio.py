"""A local upstream MCP server run as a child process of the gateway, spoken to over
stdio with the official SDK's client (`mcp.client.stdio`), behind the same interface as
an HTTP upstream (`link.UpstreamLink`: discovery, breaker, cap, timeout, metrics).

The child gets (docs/gateway.md, "Local servers"):
- a clean environment: only the variables its policy entry declares (references resolved
  at start-up), `PATH` (the gateway's minimal one) and `HOME` (its own directory); the
  SDK adds `LOGNAME`, `SHELL`, `TERM` and `USER` when the gateway has them, nothing else;
- its own directory under the gateway's root (mode 0700), as working directory and HOME,
  and as `${principal_dir}` in its args;
- stderr read line by line into the gateway's log (`gateway.upstream_stderr`), through
  the logger's redaction; the end of that pipe is how a crash is seen at once;
- a restart with backoff after a crash (`UpstreamLink.run`); while it is down, calls get
  `-32010 upstream <name>: not connected (the process exited)`;
- on shutdown the SDK's sequence: stdin closed, then SIGTERM to its process group, then
  SIGKILL (`mcp.client.stdio`, each step bounded).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
from mcp.client import Transport
from mcp.client._transport import TransportStreams
from mcp.client.stdio import StdioServerParameters, stdio_client

from bastion_common.logging import get_logger
from bastion_common.policyfile import PRINCIPAL_DIR, UpstreamPolicy
from bastion_tools.gateway.link import Listing, UpstreamLink

__all__ = ["DEFAULT_PATH", "StdioLink", "process_directory"]

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_MAX_LINE = 4096  # longer stderr lines are cut (a child must not fill the log)


def process_directory(root: Path, upstream: str, principal: str | None) -> Path:
    """The directory of one process: `<root>/<upstream>/shared`, or per principal a name
    derived from the subject by SHA-256 (a subject is never a path: no `..`, no `/`)."""
    if principal is None:
        return root / upstream / "shared"
    return root / upstream / ("p-" + hashlib.sha256(principal.encode()).hexdigest()[:32])


class StdioLink(UpstreamLink):
    def __init__(
        self,
        name: str,
        policy: UpstreamPolicy,
        on_listing: Listing,
        *,
        directory: Path,
        path: str = DEFAULT_PATH,
        reports_up: bool = True,
    ) -> None:
        super().__init__(name, policy, on_listing)
        self.directory = directory
        self.reports_up = reports_up
        self._path = path
        self._exited = False
        self._log = get_logger(__name__).bind(upstream=name)

    def parameters(self) -> StdioServerParameters:
        """What the child is started with: the declared command, args with
        `${principal_dir}` filled, and only the declared environment."""
        policy, directory = self.policy, str(self.directory)
        env = {name: value.get_secret_value() for name, value in policy.secret_env.items()}
        env |= {"PATH": self._path, "HOME": directory}
        return StdioServerParameters(
            command=policy.command or "",
            args=[arg.replace(PRINCIPAL_DIR, directory) for arg in policy.args],
            env=env,
            cwd=self.directory / policy.cwd if policy.cwd else self.directory,
        )

    async def _open(self, stack: AsyncExitStack) -> Transport:
        params = self.parameters()
        await anyio.to_thread.run_sync(_make_directories, self.directory, Path(params.cwd or "."))
        self._exited = False
        return self._child(params)

    @asynccontextmanager
    async def _child(self, params: StdioServerParameters) -> AsyncIterator[TransportStreams]:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        errlog = os.fdopen(write_fd, "w")
        try:
            async with anyio.create_task_group() as tasks:
                async with stdio_client(params, errlog=errlog) as streams:
                    # The child holds its own copy now: EOF means it (and any child of
                    # its own) is gone.
                    errlog.close()
                    tasks.start_soon(self._stderr, read_fd)
                    yield streams
                tasks.cancel_scope.cancel()
        finally:
            errlog.close()
            os.close(read_fd)

    async def _stderr(self, fd: int) -> None:
        """The child's stderr into the log, one event per line; its end is the crash."""
        pending = b""
        while True:
            await anyio.wait_readable(fd)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._log_line(line)
            if len(pending) > _MAX_LINE:
                self._log_line(pending)
                pending = b""
        if pending:
            self._log_line(pending)
        self._exited = True
        self._reconnect()

    def _log_line(self, line: bytes) -> None:
        text = line[:_MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        if text:
            self._log.info("gateway.upstream_stderr", line=text)

    def _down(self, reason: str) -> None:
        if self._exited:
            reason = "the process exited"
        super()._down(reason)


def _make_directories(directory: Path, cwd: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cwd.mkdir(mode=0o700, parents=True, exist_ok=True)
