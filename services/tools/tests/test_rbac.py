"""RBAC: the role x tool matrix of docs/architecture.md through a real MCP client session
(the SDK's streamable HTTP client), `tools/list` filtering, and the 403 step-up challenge."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from services.tools.tests.helpers import (
    PUBLIC_URL,
    Minter,
    call_tool,
    open_session,
    wait_for_event,
)

from bastion_common.contracts import PRINCIPAL_SCOPE_KEY
from bastion_common.permissions import ROLE_PERMISSIONS, ROLES
from bastion_tools.policy import ToolCallPolicy

pytestmark = pytest.mark.anyio

TOOL_PERMISSION = {
    "get_weather": "weather:read",
    "report_weather": "weather:write",
    "list_files": "files:read",
    "read_file": "files:read",
    "write_file": "files:write",
    "delete_file": "files:delete",
    "list_users": "admin:users",
    "get_security_audit": "metrics:view",
}
ARGUMENTS: dict[str, dict[str, Any]] = {
    "report_weather": {"city": "Paris", "temperature_c": 12.5, "condition": "cloudy"},
    "get_weather": {"city": "Paris"},
    "write_file": {"path": "matrix.txt", "content": "hello"},
    "list_files": {"directory": "."},
    "read_file": {"path": "matrix.txt"},
    "delete_file": {"path": "matrix.txt"},
    "list_users": {},
    "get_security_audit": {"time_range": "1h"},
}


@asynccontextmanager
async def sdk_client(app: FastAPI, token: str, *, mode: str = "legacy") -> Any:
    http = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app, client=("10.0.0.8", 40000)),
        base_url=PUBLIC_URL,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    async with (
        http,
        Client(
            streamable_http_client(f"{PUBLIC_URL}/mcp", http_client=http),
            mode=mode,  # type: ignore[arg-type]
        ) as client,
    ):
        yield client


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_sees_and_calls_exactly_its_tools(
    role: str, app_running: FastAPI, minter: Minter, redis_url: str
) -> None:
    allowed = ROLE_PERMISSIONS[role]
    token = minter.token(sub=f"user-{role}", roles=[role], scope=" ".join(sorted(allowed)))
    expected = {tool for tool, permission in TOOL_PERMISSION.items() if permission in allowed}
    (Path(app_running.state.bastion.settings.sandbox_root) / "matrix.txt").write_text("seed")
    async with sdk_client(app_running, token) as client:
        listed = await client.list_tools()
        assert {tool.name for tool in listed.tools} == expected
        for tool, arguments in ARGUMENTS.items():
            if tool in expected:
                result = await client.call_tool(tool, arguments)
                assert not result.is_error, (role, tool, result.content)
            else:
                # The guard answered HTTP 403 (asserted on the wire below); the SDK client
                # surfaces it as an error, and the refusal is in the audit record.
                with pytest.raises(MCPError):
                    await client.call_tool(tool, arguments)
                await wait_for_event(redis_url, "authz.denied", principal=f"user-{role}", tool=tool)


async def test_a_refused_call_gets_403_with_every_scope_needed(
    tools: httpx2.AsyncClient, minter: Minter, redis_url: str
) -> None:
    token = minter.token(sub="erin", roles=["user"], scope="weather:read files:read")
    session = await open_session(tools, token)
    reply = await call_tool(tools, token, session, "write_file", {"path": "a.txt", "content": "x"})
    assert reply.status_code == 403
    assert reply.json()["error"] == "insufficient_scope"
    challenge = reply.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="files:read files:write weather:read"' in challenge
    assert 'resource_metadata="http://localhost:8003/.well-known/oauth-protected-resource/mcp"' in (
        challenge
    )
    event = await wait_for_event(redis_url, "authz.denied", principal="erin", tool="write_file")
    assert event.details["missing"] == ["files:write"]
    assert event.client_id == "test-client"


async def test_tools_carry_truthful_annotations(app_running: FastAPI, minter: Minter) -> None:
    token = minter.token(roles=["admin"], scope=" ".join(sorted(ROLE_PERMISSIONS["admin"])))
    async with sdk_client(app_running, token) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert len(tools) == 8
    for name in ("get_weather", "list_files", "read_file", "list_users", "get_security_audit"):
        assert tools[name].annotations is not None
        assert tools[name].annotations.read_only_hint is True
    for name in ("write_file", "delete_file"):
        annotations = tools[name].annotations
        assert annotations is not None
        assert annotations.read_only_hint is False and annotations.destructive_hint is True
    city = tools["get_weather"].input_schema["properties"]["city"]
    assert city["maxLength"] == 64


async def test_the_modern_protocol_is_checked_the_same_way(
    app_running: FastAPI, minter: Minter
) -> None:
    token = minter.token(roles=["guest"], scope="weather:read")
    async with sdk_client(app_running, token, mode="auto") as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"get_weather"}
        assert not (await client.call_tool("get_weather", {"city": "Oslo"})).is_error
        with pytest.raises(MCPError):
            await client.call_tool("list_users", {})


async def test_a_tool_call_that_reaches_the_server_without_a_principal_runs_nothing(
    app_running: FastAPI,
) -> None:
    """Tools do not check the principal themselves: the policy is the one gate behind the
    guard, so a call without one (the guard bypassed, or a forged scope value) stops there."""
    catalog = app_running.state.bastion.extra["catalog"]
    events: list[tuple[Any, ...]] = []

    class Recorder:
        def emit(self, *args: Any, **kwargs: Any) -> None:
            events.append(args)

    policy = ToolCallPolicy(catalog, Recorder())  # type: ignore[arg-type]
    ran: list[Any] = []

    async def tool(ctx: Any) -> dict[str, Any]:
        ran.append(ctx)
        return {}

    for scope in ({}, {PRINCIPAL_SCOPE_KEY: "forged"}, {PRINCIPAL_SCOPE_KEY: {"sub": "x"}}):
        for name, arguments in ARGUMENTS.items():
            ctx = SimpleNamespace(
                method="tools/call",
                params={"name": name, "arguments": arguments},
                request=SimpleNamespace(scope=scope),
            )
            with pytest.raises(MCPError) as refused:
                await policy(ctx, tool)  # type: ignore[arg-type]
            assert refused.value.code == -32001 and "not authenticated" in refused.value.message
    assert ran == []
