"""Unauthenticated requests cannot grow Redis without bound: a flood of registrations
and of /authorize hits from one address is refused with 429 once past its budget, the
state it leaves stays bounded, other addresses are served, and a registered client
nobody uses expires. Real Redis, the app in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from services.auth.tests.helpers import (
    ISSUER,
    REDIRECT,
    Harness,
    harness,
    make_settings,
)

from bastion_auth.store import AUTH_REQUEST, CLIENT, SESSION

pytestmark = pytest.mark.anyio
META = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}


@pytest.fixture
async def tight(redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = make_settings(
        redis_url, tmp_path, register_per_ip=5, authorize_per_ip=8, dcr_client_ttl_days=1
    )
    async with harness(settings) as value:
        yield value


async def _count(h: Harness, template: str) -> int:
    pattern = template.split("{")[0] + "*"
    return len([k async for k in h.redis.scan_iter(match=pattern, count=1000)])


async def test_a_flood_of_registrations_from_one_address_is_refused_and_bounded(
    tight: Harness,
) -> None:
    statuses = [(await tight.client.post("/register", json=META)).status_code for _ in range(40)]
    assert statuses == [201] * 5 + [429] * 35
    refused = await tight.client.post("/register", json=META)
    assert refused.json()["error"] == "too_many_requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    assert await _count(tight, CLIENT) == 5 + 1  # the five, and tools' service client
    events = await tight.events("ratelimit.refused", count=35)
    assert {e["details"]["limit"] for e in events} == {"register_per_ip"}
    # Another address registers as usual.
    other = httpx2.ASGITransport(app=tight.app, client=("198.51.100.4", 1))
    async with httpx2.AsyncClient(transport=other, base_url=ISSUER) as elsewhere:
        assert (await elsewhere.post("/register", json=META)).status_code == 201


async def test_a_flood_of_authorize_hits_is_refused_and_leaves_bounded_state(
    tight: Harness,
) -> None:
    client_id = await tight.register()
    statuses = []
    for _ in range(30):
        tight.client.cookies.clear()  # a new browser each time: a session each
        statuses.append((await tight.authorize(client_id)).status_code)
    assert statuses == [200] * 8 + [429] * 22
    assert await _count(tight, AUTH_REQUEST) == 8
    assert await _count(tight, SESSION) <= 8
    page = await tight.authorize(client_id)
    assert page.status_code == 429 and "Too many sign-in requests" in page.text
    assert int(page.headers["retry-after"]) >= 1
    memory = (await tight.redis.info("memory"))["used_memory"]
    for _ in range(200):
        tight.client.cookies.clear()
        await tight.authorize(client_id)
    # Refusals store nothing: only the audit stream grows, by one entry per refusal.
    assert await _count(tight, AUTH_REQUEST) == 8
    assert (await tight.redis.info("memory"))["used_memory"] - memory < 512 * 1024


async def test_a_registered_client_expires_unless_it_is_used(tight: Harness) -> None:
    client_id = await tight.register()
    key = CLIENT.format(client_id=client_id)
    assert 0 < await tight.redis.ttl(key) <= 86400
    await tight.redis.expire(key, 5)  # most of its life has passed unused...
    assert (await tight.authorize(client_id)).status_code == 200
    assert await tight.redis.ttl(key) > 86000  # ...and using it starts the clock again
    service = CLIENT.format(client_id="bastion-tools")
    assert await tight.redis.ttl(service) == -1  # configured clients never expire
