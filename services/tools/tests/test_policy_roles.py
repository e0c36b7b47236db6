"""tools takes its roles from the policy file: the scopes its metadata offers and each
role's bucket (docs/gateway.md, "Roles"). The file's own roles, never the built-in ones
once the file has `roles:`."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from services.tools.tests.helpers import (
    Minter,
    call_tool,
    open_session,
    post,
    rate_limit,
    rpc,
    serve,
)

from bastion_common.permissions import BUILTIN_PERMISSIONS
from bastion_common.policyfile import parse_policy
from bastion_tools.app import create_app
from bastion_tools.settings import Settings

pytestmark = pytest.mark.anyio

POLICY = parse_policy("""
roles:
  forecaster:
    permissions: [weather:read, weather:write]
    rate_limit: {capacity: 5, refill_per_second: 0.01}
  watcher:
    permissions: [weather:read, far:read]
    rate_limit: {capacity: 3, refill_per_second: 0.01}
mcpServers:
  far: {url: "http://127.0.0.1:9/mcp", pinning: auto}
""")


async def test_the_metadata_offers_every_permission_the_file_offers(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(create_app(make_settings(gateway_settle_seconds=0), POLICY)) as client:
        document = (await client.get("/.well-known/oauth-protected-resource/mcp")).json()
    assert document["scopes_supported"] == sorted(BUILTIN_PERMISSIONS | {"far:read", "far:write"})


async def test_a_file_role_gets_its_own_bucket_and_an_unknown_role_the_smallest(
    make_settings: Callable[..., Settings], minter: Minter
) -> None:
    settings = make_settings(gateway_settle_seconds=0, tool_costs={"get_weather": 1})
    async with serve(create_app(settings, POLICY)) as client:
        forecaster = minter.token(sub="fay", roles=["forecaster"], scope="weather:read")
        session = await open_session(client, forecaster)  # 2 of the 5
        statuses = [
            (await call_tool(client, forecaster, session, "get_weather", {"city": "Oslo"}))
            for _ in range(4)
        ]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]
        assert rate_limit(statuses[-1].headers, "ratelimit-policy")["q"] == 5
        # `admin` is a built-in role, but not one of this file's: the smallest bucket (3).
        stranger = minter.token(sub="sam", roles=["admin"], scope="weather:read")
        reply = await post(client, stranger, rpc("tools/list"))
        assert rate_limit(reply.headers, "ratelimit-policy")["q"] == 3
