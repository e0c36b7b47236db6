"""The guard as a library: `secure()` put in front of a small MCP server of the test's
own (not the tools service), then attacked: no token, a token without the scope, a
revoked token, a tool without a rule, and a Redis that does not answer."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from mcp.server.mcpserver import MCPServer
from pydantic import SecretStr
from services.tools.tests.helpers import MCP_HEADERS, free_port, rpc, wait_for_event

from bastion_common.publisher import AuditPublisher
from bastion_common.redis import create_redis
from bastion_common.tokens import TokenValidator, TrustedIssuer, denylist_key
from bastion_tools.guard import BearerAuthenticator, GuardConfig, Rule, secure

pytestmark = pytest.mark.anyio

ISSUER = "https://login.notes.test"
RESOURCE = "http://notes.test/mcp"
SECRET = "a-shared-secret-long-enough-for-hs256-0123456789"


def token(scope: str, *, jti: str | None = None) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "carol", "aud": RESOURCE, "iat": now, "nbf": now,
              "exp": now + 300, "jti": jti or uuid.uuid4().hex, "scope": scope,
              "roles": ["user"]}  # fmt: skip
    return jwt.encode(claims, SECRET, algorithm="HS256", headers={"typ": "at+jwt"})


def _notes_server() -> MCPServer[Any]:
    mcp: MCPServer[Any] = MCPServer(name="notes")

    @mcp.tool()
    async def read_note(name: str) -> str:
        """A note's text."""
        return f"note {name}"

    @mcp.tool()
    async def delete_note(name: str) -> str:
        """Delete a note."""
        return f"deleted {name}"

    @mcp.tool()
    async def forgotten() -> str:
        """A tool its author gave no rule: never listed, never run."""
        return "ran"

    return mcp


@asynccontextmanager
async def secured(
    redis_url: str,
    tmp_path: Path,
    state_url: str | None = None,
    server: MCPServer[Any] | None = None,
) -> AsyncIterator[httpx2.AsyncClient]:
    """`server` (the notes server by default) behind `secure()`, as an HTTP client."""
    audit_redis = create_redis(redis_url)
    state_redis = create_redis(state_url or redis_url, timeout=0.3)
    validator = TokenValidator(
        [TrustedIssuer(ISSUER, algorithms=("HS256",), shared_secret=SecretStr(SECRET))], RESOURCE
    )
    app = secure(
        server or _notes_server(),
        GuardConfig(
            resource_uri=RESOURCE,
            resource_metadata_url="http://notes.test/.well-known/oauth-protected-resource/mcp",
            scopes_supported=("notes:read", "notes:delete"),
            allowed_hosts=("notes.test",),
            authorization_servers=(ISSUER,),
        ),
        authenticator=BearerAuthenticator(validator),
        rules={"read_note": Rule("notes:read"), "delete_note": Rule("notes:delete", cost=5)},
        redis=state_redis,
        audit=AuditPublisher(audit_redis, tmp_path / "spool"),
        service="notes",
        stateless_http=True,
    )
    transport = httpx2.ASGITransport(app=app, client=("10.0.0.9", 40000))
    try:
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(transport=transport, base_url="http://notes.test") as client,
        ):
            yield client
    finally:
        await validator.aclose()
        await audit_redis.aclose()
        await state_redis.aclose()


async def _post(client: httpx2.AsyncClient, token: str | None, body: Any) -> httpx2.Response:
    headers = dict(MCP_HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post("/mcp", json=body, headers=headers)


def _call(name: str) -> dict[str, Any]:
    return rpc("tools/call", {"name": name, "arguments": {"name": "groceries"}})


async def test_a_call_without_a_token_gets_401_and_the_way_to_authorize(
    redis_url: str, tmp_path: Path
) -> None:
    async with secured(redis_url, tmp_path) as client:
        reply = await _post(client, None, _call("read_note"))
        metadata = await client.get("/.well-known/oauth-protected-resource/mcp")
    assert reply.status_code == 401
    challenge = reply.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and "resource_metadata=" in challenge
    assert metadata.json()["authorization_servers"] == [ISSUER]
    await wait_for_event(redis_url, "authn.failed", presented="none")


async def test_a_token_without_the_scope_is_refused_with_a_step_up_challenge(
    redis_url: str, tmp_path: Path
) -> None:
    async with secured(redis_url, tmp_path) as client:
        reply = await _post(client, token("notes:read"), _call("delete_note"))
    assert reply.status_code == 403
    assert reply.json()["error"] == "insufficient_scope"
    assert 'scope="notes:delete notes:read"' in reply.headers["www-authenticate"]
    denied = await wait_for_event(redis_url, "authz.denied", missing=["notes:delete"])
    assert denied.service == "notes" and denied.tool == "delete_note"


async def test_the_list_shows_only_what_the_scopes_allow_and_allowed_calls_run(
    redis_url: str, tmp_path: Path
) -> None:
    bearer = token("notes:read")
    async with secured(redis_url, tmp_path) as client:
        listed = await _post(client, bearer, rpc("tools/list"))
        ran = await _post(client, bearer, _call("read_note"))
    assert listed.status_code == 200
    assert [tool["name"] for tool in listed.json()["result"]["tools"]] == ["read_note"]
    assert ran.status_code == 200 and "note groceries" in ran.text
    assert "ratelimit" in ran.headers
    await wait_for_event(redis_url, "tool.called", tool="read_note")


async def test_a_tool_without_a_rule_is_never_run(redis_url: str, tmp_path: Path) -> None:
    bearer = token("notes:read notes:delete")
    async with secured(redis_url, tmp_path) as client:
        reply = await _post(client, bearer, _call("forgotten"))
    assert reply.status_code == 200  # answered as for a tool that does not exist
    result = reply.json()["result"]
    assert result["isError"] is True
    assert result["content"] == [{"type": "text", "text": "Unknown tool: forgotten"}]


async def test_a_revoked_token_is_refused(redis_url: str, tmp_path: Path) -> None:
    jti = uuid.uuid4().hex
    redis = create_redis(redis_url)
    await redis.set(denylist_key(jti), "1", ex=60)
    await redis.aclose()
    async with secured(redis_url, tmp_path) as client:
        reply = await _post(client, token("notes:read", jti=jti), _call("read_note"))
    assert reply.status_code == 401
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    await wait_for_event(redis_url, "authn.failed", reason="token revoked")


async def test_a_redis_that_does_not_answer_refuses_the_call(
    redis_url: str, tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with secured(redis_url, tmp_path, state_url=dead) as client:
        reply = await _post(client, token("notes:read"), _call("read_note"))
    assert reply.status_code == 503
    assert "note groceries" not in reply.text
    await wait_for_event(redis_url, "ratelimit.refused", reason="state store unavailable")
