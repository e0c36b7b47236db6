"""A clock step: tokens signed with auth's real key by a node whose clock is off.

The tokens are made inside the auth container with its real key (tests/integration/mint.py),
with claims (iat, nbf, exp) as a node would write them whose clock is `offset` seconds
ahead (or behind). tools must accept them exactly as its 30 s of
leeway says: 20 s ahead accepted, 2 minutes ahead refused; expired 20 s ago accepted,
40 s ago refused.
"""

from __future__ import annotations

import re

import httpx2
import pytest

from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp
from tests.integration.mint import mint_token

pytestmark = pytest.mark.anyio


def _token(stack: Stack, offset: float, lifetime: int = 300) -> str:
    return mint_token(stack, offset=offset, lifetime=lifetime, subject="clock-test")


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
