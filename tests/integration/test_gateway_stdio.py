"""Local (stdio) MCP servers nobody here wrote, run by `tools` as child processes from its
own image (deploy/stdio), through the whole stack: real users log in through auth and
drive the gateway with the official SDK client.

npm's `@modelcontextprotocol/server-filesystem` runs one process per principal on a
directory of its own; npm's `@modelcontextprotocol/server-everything` and PyPI's
`mcp-server-time` run shared (deploy/upstreams/policy.test.yaml: fs_, evs_, clock_).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from tests.integration.audit_api import AuditApi, now
from tests.integration.conftest import Stack
from tests.integration.oauth import OAuthClient
from tests.integration.test_gateway import POLICY, mcp_url, sdk_client

pytestmark = pytest.mark.anyio
ALL_SCOPES = " ".join(sorted(POLICY.role_table.offered))  # every scope the test policy offers

# Kills the newest process whose command line holds argv[1] (inside the tools container,
# as its own user: the children are its own) and prints its pid.
KILL = """
import os, signal, sys
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
    except OSError:
        continue
    if any(sys.argv[1].encode() in part for part in cmd) and int(pid) != os.getpid():
        found.append(int(pid))
os.kill(max(found), signal.SIGKILL)
print(max(found))
"""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class People:
    """Sign-ins for new users of one role, each a principal of its own."""

    def __init__(self, stack: Stack, client: OAuthClient, admin_token: str) -> None:
        self._stack, self._client, self._admin_token = stack, client, admin_token

    async def token(self, role: str) -> str:
        username, password = f"stdio-{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
        async with httpx2.AsyncClient(timeout=10) as http:
            created = await http.post(
                f"{self._stack.urls['auth']}/admin/users",
                json={"username": username, "password": password, "roles": [role]},
                headers={"Authorization": f"Bearer {self._admin_token}"},
            )
        assert created.status_code in (200, 201), created.text
        body = await self._client.token(
            username, password, resource=mcp_url(self._stack), scope=ALL_SCOPES
        )
        return str(body["access_token"])


@pytest.fixture(scope="module")
async def people(stack: Stack) -> People:
    admin = (stack.env["BOOTSTRAP_ADMIN_USERNAME"], stack.env["BOOTSTRAP_ADMIN_PASSWORD"])
    client = await OAuthClient.register(stack.urls["auth"], "gateway-stdio")
    admin_api = await client.token(
        *admin, resource=f"{stack.urls['auth']}/admin", scope="admin:users"
    )
    return People(stack, client, admin_api["access_token"])


@pytest.fixture(scope="module")
async def admin_token(stack: Stack) -> str:
    admin = (stack.env["BOOTSTRAP_ADMIN_USERNAME"], stack.env["BOOTSTRAP_ADMIN_PASSWORD"])
    client = await OAuthClient.register(stack.urls["auth"], "gateway-stdio-admin")
    body = await client.token(*admin, resource=mcp_url(stack), scope=ALL_SCOPES)
    return str(body["access_token"])


def _text(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


async def _ready(stack: Stack, upstream: str, starts: str = "up", timeout: float = 60) -> str:
    """Wait until the readiness report of `upstream` starts with `starts`."""
    with anyio.fail_after(timeout):
        async with httpx2.AsyncClient(timeout=5) as http:
            while True:
                checks = (await http.get(f"{stack.urls['tools']}/readyz")).json()["checks"]
                report = str(checks.get(f"upstream:{upstream}", ""))
                if report.startswith(starts):
                    return report
                await anyio.sleep(0.3)


async def _no_processes(stack: Stack) -> None:
    """Until every per-principal filesystem process has been stopped for idling."""
    with anyio.fail_after(60):
        while "0 of 2 per-principal" not in await _ready(stack, "files"):
            await anyio.sleep(0.5)


async def test_two_principals_of_the_filesystem_server_cannot_see_each_others_files(
    stack: Stack, people: People
) -> None:
    await _ready(stack, "files")
    await _no_processes(stack)
    alice, bob = await people.token("premium"), await people.token("premium")
    async with sdk_client(stack, alice) as client:
        (home_a,) = _text(await client.call_tool("fs_list_allowed_directories", {})).split()[-1:]
        wrote = await client.call_tool(
            "fs_write_file", {"path": f"{home_a}/diary.txt", "content": "alice's secret"}
        )
        assert not wrote.is_error, _text(wrote)
        mine = await client.call_tool("fs_read_text_file", {"path": f"{home_a}/diary.txt"})
        assert _text(mine) == "alice's secret"
    async with sdk_client(stack, bob) as client:
        (home_b,) = _text(await client.call_tool("fs_list_allowed_directories", {})).split()[-1:]
        assert home_b != home_a and home_a.startswith("/stdio/files/p-")
        assert home_b.startswith("/stdio/files/p-")
        listed = await client.call_tool("fs_list_directory", {"path": home_b})
        assert "diary.txt" not in _text(listed)
        name = home_a.rsplit("/", 1)[1]
        for attempt in (f"{home_a}/diary.txt", f"{home_b}/../{name}/diary.txt"):
            stolen = await client.call_tool("fs_read_text_file", {"path": attempt})
            assert stolen.is_error and "alice's secret" not in _text(stolen), attempt
            assert "denied" in _text(stolen).lower(), _text(stolen)
        tree = await client.call_tool("fs_list_directory", {"path": "/stdio/files"})
        assert tree.is_error and name not in _text(tree)
    # Each directory is its process's alone (0700), made by the gateway before the start.
    modes = stack.exec("tools", "stat", "-c", "%a %U", home_a, home_b).split("\n")
    assert modes[:2] == ["700 bastion", "700 bastion"], modes


async def test_past_max_processes_a_principal_gets_a_clear_error_then_a_slot_once_one_idles(
    stack: Stack, people: People, audit: AuditApi
) -> None:
    await _no_processes(stack)
    since = now()
    first, second, third = [await people.token("user") for _ in range(3)]
    for token in (first, second):
        async with sdk_client(stack, token) as client:
            assert not (await client.call_tool("fs_list_allowed_directories", {})).is_error
    assert "2 of 2 per-principal" in await _ready(stack, "files")
    async with sdk_client(stack, third) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("fs_list_allowed_directories", {})
    assert refused.value.code == -32010
    assert refused.value.message.startswith("upstream files: 2 processes already run")
    assert "max_processes 2" in refused.value.message
    events = await audit.wait_for(
        "tool.called", since=since, tool="fs_list_allowed_directories", count=3,
        where=lambda e: e.get("details", {}).get("upstream") == "files",
    )  # fmt: skip
    assert sorted(e["outcome"] for e in events)[0] != "success"  # the refused one
    await _no_processes(stack)  # idle_timeout_seconds: 6
    async with sdk_client(stack, third) as client:
        assert not (await client.call_tool("fs_list_allowed_directories", {})).is_error


async def test_the_everything_server_over_stdio_sees_only_its_declared_environment(
    stack: Stack, admin_token: str
) -> None:
    await _ready(stack, "everything-stdio")
    async with sdk_client(stack, admin_token) as client:
        echoed = await client.call_tool("evs_echo", {"message": "over stdio"})
        shown = await client.call_tool("evs_get-env", {})
    assert _text(echoed) == "Echo: over stdio"
    env: dict[str, Any] = json.loads(_text(shown))
    declared = {"EVS_MODE", "EVS_API_KEY", "PATH", "HOME"}
    # The SDK's stdio client passes these when tools has them; nothing else of tools'.
    assert declared <= set(env) <= declared | {"LOGNAME", "SHELL", "TERM", "USER"}, sorted(env)
    assert env["EVS_MODE"] == "declared-plain-value"
    time_key = Path(stack.env["TIME_KEY_FILE"]).read_text().strip()  # noqa: ASYNC240
    assert env["EVS_API_KEY"] == time_key  # the declared secret, by reference
    assert env["HOME"] == "/stdio/everything-stdio/shared"
    assert env["PATH"] == "/opt/stdio/bin:/usr/local/bin:/usr/bin:/bin"
    text = _text(shown)
    for name in ("TOOLS_CLIENT_SECRET", "EVERYTHING_TOKEN", "REDIS_PASSWORD_TOOLS"):
        assert stack.env[name] not in text, name
    assert stack.env["EVENT_KEY_TOOLS"] not in text
    for variable in ("REDIS_URL", "BASTION_EVENT_KEY", "TOOLS_CLIENT_SECRET", "EVERYTHING_TOKEN"):
        assert variable not in env


async def test_the_time_server_over_stdio_answers_and_after_a_crash_is_restarted(
    stack: Stack, people: People
) -> None:
    await _ready(stack, "clock")
    token = await people.token("user")
    async with sdk_client(stack, token) as client:
        now_ = await client.call_tool("clock_get_current_time", {"timezone": "Europe/Paris"})
        assert not now_.is_error and now_.structured_content is not None
        assert now_.structured_content["timezone"] == "Europe/Paris"
        killed = stack.exec("tools", "python", "-c", KILL, "mcp-server-time").strip()
        with pytest.raises(MCPError) as down:
            await client.call_tool("clock_get_current_time", {"timezone": "Asia/Tokyo"})
        assert down.value.code == -32010
        assert down.value.message.startswith("upstream clock: "), down.value.message
    await _ready(stack, "clock")
    async with sdk_client(stack, token) as client:
        again = await client.call_tool("clock_get_current_time", {"timezone": "Asia/Tokyo"})
    assert not again.is_error
    logs = stack.logs("tools")
    assert '"reason": "the process exited"' in logs and killed.isdigit()


async def test_the_childrens_stderr_is_in_the_tools_log_and_no_trace_is(stack: Stack) -> None:
    await _ready(stack, "files")
    lines = [json.loads(x) for x in stack.logs("tools").splitlines() if x.startswith("{")]
    stderr = [x for x in lines if x.get("event") == "gateway.upstream_stderr"]
    assert any(
        x["upstream"] == "files" and "Secure MCP Filesystem Server running on stdio" in x["line"]
        for x in stderr
    ), stderr[:5]
    assert "Traceback" not in stack.logs("tools")
