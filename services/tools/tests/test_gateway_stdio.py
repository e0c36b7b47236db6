"""Local (stdio) upstreams: real child processes (tests/stdio_server.py, the SDK's
MCPServer over stdio) behind the whole pipeline (bastion_tools.gateway.stdio,
.processes). Each rule is attacked: the child must not see the gateway's environment,
one principal must not reach another's process or files, a crash is an error naming the
upstream and then a restart, the cap holds, and a child that ignores SIGTERM is killed."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import structlog
from services.tools.tests.helpers import Minter, call_tool, open_session, serve
from services.tools.tests.stdio_server import FAKE_JWT

from bastion_common.logging import configure_logging
from bastion_common.policyfile import Policy, parse_policy
from bastion_tools.app import create_app
from bastion_tools.gateway import Gateway
from bastion_tools.settings import Settings

pytestmark = pytest.mark.anyio

SERVER = str(Path(__file__).with_name("stdio_server.py"))
SCOPES = "weather:read files:read files:write"
GATEWAY_SECRET = "gateway-own-secret-0123456789"


def _policy(
    local_args: str = SERVER, mine_command: str = sys.executable, idle: float = 300
) -> Policy:
    text = textwrap.dedent(f"""\
        mcpServers:
          local:
            command: {sys.executable}
            args: [{local_args}]
            env: {{LOCAL_MODE: plain-value, LOCAL_API_KEY: "${{env:LOCAL_KEY}}"}}
            permissions: {{read: weather:read, write: weather:read}}
            pinning: "off"
            timeout_seconds: 10
            refresh_seconds: 3600
          mine:
            command: {mine_command}
            args: [{SERVER}, "--dir=${{principal_dir}}"]
            isolation: per-principal
            permissions: {{read: files:read, write: files:write}}
            pinning: "off"
            timeout_seconds: 10
            refresh_seconds: 3600
            max_processes: 2
            idle_timeout_seconds: {idle}
        """)
    return parse_policy(text, environ={"LOCAL_KEY": "local-key-value"})


@pytest.fixture
async def gw(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx2.AsyncClient]:
    # In the gateway's own environment: no child may see it.
    monkeypatch.setenv("TOOLS_SOMETHING_SECRET", GATEWAY_SECRET)
    settings = make_settings(stdio_root=str(tmp_path / "stdio"), gateway_settle_seconds=20)
    async with serve(create_app(settings, _policy())) as client:
        yield client


def _gateway(client: httpx2.AsyncClient) -> Gateway:
    transport = client._transport  # the ASGI transport of `serve`
    gateway: Gateway = transport.app.state.bastion.extra["gateway"]  # type: ignore[attr-defined]
    return gateway


async def _call(
    client: httpx2.AsyncClient, token: str, name: str, arguments: dict[str, Any] | None = None
) -> dict[str, Any]:
    reply = await call_tool(client, token, await open_session(client, token), name, arguments or {})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _structured(body: dict[str, Any]) -> Any:
    result = body["result"]
    content = result.get("structuredContent")
    if isinstance(content, dict) and set(content) == {"result"}:
        return content["result"]
    return content if content is not None else json.loads(result["content"][0]["text"])


async def _wait(predicate: Callable[[], bool], timeout: float = 15) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


async def test_a_child_sees_only_its_declared_environment_in_its_own_directory(
    gw: httpx2.AsyncClient, minter: Minter, tmp_path: Path
) -> None:
    token = minter.token(sub="dana", scope=SCOPES)
    seen = _structured(await _call(gw, token, "local_whoami"))
    directory = tmp_path / "stdio" / "local" / "shared"
    env = seen["env"]
    # The SDK adds these four when the gateway has them, and a Python child sets
    # LC_CTYPE itself (PEP 538 locale coercion); nothing else of the gateway's.
    extra = set(env) - {"LOCAL_MODE", "LOCAL_API_KEY", "PATH", "HOME"}
    assert extra <= {"LOGNAME", "SHELL", "TERM", "USER", "LC_CTYPE"}, extra
    assert env["LOCAL_MODE"] == "plain-value" and env["LOCAL_API_KEY"] == "local-key-value"
    assert (
        env["HOME"] == str(directory) and env["PATH"] == Settings.model_fields["stdio_path"].default
    )
    assert GATEWAY_SECRET not in json.dumps(seen) and "REDIS" not in json.dumps(env)
    assert seen["cwd"] == str(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@contextmanager
def _json_logs() -> Iterator[None]:
    """The service's own log setup (JSON lines on the current stdout, redaction), undone
    afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("tools")
    # No logger may keep this stdout once the test is over.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_the_childs_stderr_reaches_the_log_line_by_line_with_credentials_redacted(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(stdio_root=str(tmp_path / "stdio"), gateway_settle_seconds=20)
    with _json_logs():
        async with serve(create_app(settings, _policy())):
            pass
        out = capsys.readouterr().out
    lines = [json.loads(x) for x in out.splitlines() if "gateway.upstream_stderr" in x]
    texts = [line["line"] for line in lines if line["upstream"] == "local"]
    assert "stdio-test starting" in texts
    assert any(t.startswith("loaded credential") and "[redacted]" in t for t in texts), texts
    assert FAKE_JWT not in out


async def test_a_crashed_child_is_an_error_naming_the_upstream_then_restarts(
    gw: httpx2.AsyncClient, minter: Minter
) -> None:
    token = minter.token(sub="erin", scope=SCOPES)
    link = _gateway(gw).links["local"]
    first = _structured(await _call(gw, token, "local_whoami"))["pid"]
    os.kill(first, signal.SIGKILL)
    await _wait(lambda: link.state == "down")
    assert link.reason == "the process exited"
    down = await _call(gw, token, "local_whoami")
    assert down["error"]["code"] == -32010
    assert down["error"]["message"].startswith("upstream local: not connected (the process exited")
    await _wait(lambda: link.state == "up")
    again = _structured(await _call(gw, token, "local_whoami"))["pid"]
    assert again != first


async def test_two_principals_get_their_own_process_and_cannot_read_each_others_files(
    gw: httpx2.AsyncClient, minter: Minter, tmp_path: Path
) -> None:
    alice = minter.token(sub="alice", scope=SCOPES)
    bob = minter.token(sub="bob", scope=SCOPES)
    await _call(gw, alice, "mine_write", {"name": "diary.txt", "text": "alice only"})
    a = _structured(await _call(gw, alice, "mine_whoami"))
    b = _structured(await _call(gw, bob, "mine_whoami"))
    assert a["pid"] != b["pid"] and a["cwd"] != b["cwd"]
    assert a["argv"] == [f"--dir={a['cwd']}"]  # ${principal_dir} is the process's own
    assert Path(a["cwd"]).parent == tmp_path / "stdio" / "mine"
    assert _structured(await _call(gw, bob, "mine_files")) == []
    assert _structured(await _call(gw, alice, "mine_files")) == ["diary.txt"]


async def test_a_subject_that_looks_like_a_path_gets_a_directory_named_by_its_hash(
    gw: httpx2.AsyncClient, minter: Minter, tmp_path: Path
) -> None:
    sneaky = minter.token(sub="../../local/shared", scope=SCOPES)
    seen = _structured(await _call(gw, sneaky, "mine_whoami"))
    assert Path(seen["cwd"]).parent == tmp_path / "stdio" / "mine"
    assert Path(seen["cwd"]).name.startswith("p-") and ".." not in seen["cwd"]


async def test_past_the_cap_a_call_is_refused_naming_the_upstream_and_the_cap(
    gw: httpx2.AsyncClient, minter: Minter
) -> None:
    tokens = [minter.token(sub=f"user-{i}", scope=SCOPES) for i in range(3)]
    for token in tokens[:2]:
        assert "result" in await _call(gw, token, "mine_files")
    refused = await _call(gw, tokens[2], "mine_files")
    assert refused["error"]["code"] == -32010
    assert refused["error"]["message"].startswith("upstream mine: 2 processes already run")
    assert "max_processes 2" in refused["error"]["message"]
    assert refused["error"]["data"] == {"upstream": "mine", "reason": "process_cap"}
    # The ones running still serve their own principals.
    assert "result" in await _call(gw, tokens[0], "mine_files")


async def test_an_idle_process_is_stopped_and_its_slot_freed(
    make_settings: Callable[..., Settings], minter: Minter, tmp_path: Path
) -> None:
    settings = make_settings(stdio_root=str(tmp_path / "stdio"), gateway_settle_seconds=20)
    policy = _policy(idle=1)
    async with serve(create_app(settings, policy)) as gw:
        pool = _gateway(gw).pools["mine"]
        token = minter.token(sub="frank", scope=SCOPES)
        pid = _structured(await _call(gw, token, "mine_whoami"))["pid"]
        assert len(pool.running) == 1
        await _wait(lambda: not pool.running and pool.report().startswith("0 of"))
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the process is gone, not only forgotten
        again = _structured(await _call(gw, token, "mine_whoami"))["pid"]
        assert again != pid  # started again on the next call


async def test_a_child_that_ignores_sigterm_is_killed_when_the_gateway_stops(
    make_settings: Callable[..., Settings], minter: Minter, tmp_path: Path
) -> None:
    policy = _policy(local_args=f"{SERVER}, --ignore-term")
    settings = make_settings(stdio_root=str(tmp_path / "stdio"), gateway_settle_seconds=20)
    async with serve(create_app(settings, policy)) as gw:
        token = minter.token(sub="gina", scope=SCOPES)
        pid = _structured(await _call(gw, token, "local_whoami"))["pid"]
        other = _structured(await _call(gw, token, "mine_whoami"))["pid"]
    for gone in (pid, other):
        with pytest.raises(ProcessLookupError):
            os.kill(gone, 0)


async def test_a_command_that_cannot_start_is_an_error_naming_the_upstream(
    make_settings: Callable[..., Settings], minter: Minter, tmp_path: Path
) -> None:
    policy = _policy(mine_command=str(tmp_path / "no-such-server"))
    settings = make_settings(stdio_root=str(tmp_path / "stdio"), gateway_settle_seconds=20)
    async with serve(create_app(settings, policy)) as gw:
        link = _gateway(gw).links["mine"]
        await _wait(lambda: link.state == "down")
        assert link.reason == "FileNotFoundError"
        ready = (await gw.get("/readyz")).json()["checks"]["upstream:mine"]
        assert ready.startswith("down (FileNotFoundError, 0 of 2 per-principal processes")
