from __future__ import annotations

from pathlib import Path

import pytest
from services.auth.tests.helpers import harness, make_settings


async def _failure_ip(redis_url: str, tmp_path: Path, forwarded: str, **overrides: object) -> str:
    async with harness(make_settings(redis_url, tmp_path, **overrides)) as h:
        client_id = await h.register()
        h.client.headers["x-forwarded-for"] = forwarded
        page = await h.authorize(client_id)
        from services.auth.tests.helpers import hidden_inputs

        await h.client.post(
            "/login",
            data={**hidden_inputs(page.text), "username": "admin", "password": "wrong-password-1"},
        )
        events = await h.events("auth.login")
        return str(events[0]["ip"])


@pytest.mark.anyio
async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
    redis_url: str, tmp_path: Path
) -> None:
    assert await _failure_ip(redis_url, tmp_path, "198.51.100.9") == "203.0.113.7"


@pytest.mark.anyio
async def test_forwarded_for_is_read_past_trusted_proxies_only(
    redis_url: str, tmp_path: Path
) -> None:
    ip = await _failure_ip(
        redis_url,
        tmp_path,
        "1.2.3.4, 198.51.100.9, 203.0.113.8",
        trusted_proxies=["203.0.113.0/24"],
    )
    # 1.2.3.4 was written by the client itself; the first untrusted hop from the right wins.
    assert ip == "198.51.100.9"
