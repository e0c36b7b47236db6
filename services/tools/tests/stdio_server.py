"""A real stdio MCP server for the gateway's stdio tests (the SDK's `MCPServer`), run by
the gateway as a child process: `python stdio_server.py [--ignore-term]`.

Its tools show what the process was given (environment, working directory, pid) and
touch files in its working directory, so a test can prove the clean environment and the
isolation between principals; `crash` ends the process the way a crash would. It writes
lines to stderr at start, one with a credential the gateway's log must redact.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

FAKE_JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzdGRlcnIifQ.c3RkZXJyLXNpZ25hdHVyZQ"

server = MCPServer(name="stdio-test")


@server.tool(description="What this process was given")
def whoami() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "argv": sys.argv[1:],
    }


@server.tool(description="Write a file in the working directory")
def write(name: str, text: str) -> str:
    Path(name).write_text(text)
    return f"wrote {name}"


@server.tool(description="The files in the working directory")
def files() -> list[str]:
    return sorted(p.name for p in Path().iterdir())


@server.tool(description="Read a file by path")
def read(path: str) -> str:
    return Path(path).read_text()


@server.tool(description="End the process at once, as a crash would")
def crash() -> str:
    os._exit(3)


if __name__ == "__main__":
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("stdio-test starting", file=sys.stderr, flush=True)
    print(f"loaded credential Bearer {FAKE_JWT}", file=sys.stderr, flush=True)
    server.run("stdio")
