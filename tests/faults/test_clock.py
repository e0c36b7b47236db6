"""A clock step: tokens signed with auth's real key by a node whose clock is off.

The tokens are made inside the auth container, with its settings, its Redis and its
current signing key, and claims (iat, nbf, exp) as a node would write them whose clock
is `offset` seconds ahead (or behind). tools must accept them exactly as its 30 s of
leeway says: 20 s ahead accepted, 2 minutes ahead refused; expired 20 s ago accepted,
40 s ago refused.
"""

from __future__ import annotations

import re

import httpx2
import pytest

from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp

pytestmark = pytest.mark.anyio

_MINT = """
import asyncio, sys, time, uuid
from bastion_auth.keys import KeyRing
from bastion_auth.settings import Settings
from bastion_common.redis import create_redis
from bastion_common.settings import load_settings

async def main(offset, lifetime, resource):
    settings = load_settings(Settings)
    redis = create_redis(settings.redis_url.get_secret_value())
    now = int(time.time() + offset)
    claims = {"iss": settings.issuer, "sub": "clock-test", "aud": resource,
              "iat": now, "nbf": now, "exp": now + lifetime, "jti": uuid.uuid4().hex,
              "client_id": "clock-test", "scope": "weather:read", "roles": ["user"]}
    print(await KeyRing(redis, settings).sign(claims))
    await redis.aclose()

asyncio.run(main(float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
"""


def _token(stack: Stack, offset: float, lifetime: int = 300) -> str:
    resource = f"{stack.urls['tools']}/mcp"
    out = stack.exec("auth", "python", "-c", _MINT, str(offset), str(lifetime), resource)
    return out.strip().splitlines()[-1]


async def _status(stack: Stack, token: str) -> tuple[int, str]:
    async with httpx2.AsyncClient(timeout=10) as http:
        reply = await McpHttp(f"{stack.urls['tools']}/mcp", token).initialize(http)
    found = re.search(r'error_description="([^"]*)"', reply.headers.get("www-authenticate", ""))
    return reply.status, found.group(1) if found else ""


@pytest.mark.parametrize(
    ("offset", "lifetime", "status", "why"),
    [
        (20, 300, 200, ""),  # 20 s ahead: inside the leeway
        (120, 300, 401, "not yet valid"),  # 2 minutes ahead
        (-320, 300, 200, ""),  # expired 20 s ago: inside the leeway
        (-340, 300, 401, "expired"),  # expired 40 s ago
    ],
)
async def test_a_token_from_a_clock_that_is_off_is_judged_by_the_leeway(
    stack: Stack, offset: float, lifetime: int, status: int, why: str
) -> None:
    got, description = await _status(stack, _token(stack, offset, lifetime))
    print(f"\nfault clock step {offset:+.0f} s: {got} {description}")  # noqa: T201
    assert got == status, description
    assert why in description
