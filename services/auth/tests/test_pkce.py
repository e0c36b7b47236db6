from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from services.auth.tests.helpers import REDIRECT, Harness, pkce_pair


def _query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@pytest.mark.anyio
async def test_plain_pkce_is_refused(h: Harness) -> None:
    client_id = await h.register()
    response = await h.authorize(client_id, code_challenge_method="plain")
    # A self-registered client gets an error page, not a redirect (RFC 9700 §4.11.2).
    assert response.status_code == 400 and "location" not in response.headers
    assert "S256" in response.text
    events = await h.events("oauth.request_failed")
    assert events[0]["details"]["error"] == "invalid_request"


@pytest.mark.anyio
async def test_missing_pkce_challenge_is_refused(h: Harness) -> None:
    client_id = await h.register()
    response = await h.client.get(
        "/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "resource": "http://localhost:8003/mcp",
            "state": "s",
        },
    )
    assert response.status_code == 400 and "location" not in response.headers
    assert "code_challenge" in response.text


@pytest.mark.anyio
async def test_wrong_verifier_is_refused_and_burns_the_code(h: Harness) -> None:
    client_id = await h.register()
    verifier, challenge = pkce_pair()
    code = await h.code(client_id, (verifier, challenge))
    bad = await h.exchange(client_id, code, pkce_pair()[0])
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    assert bad.headers["cache-control"] == "no-store"
    again = await h.exchange(client_id, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


@pytest.mark.anyio
async def test_replayed_code_is_refused_and_revokes_its_tokens(h: Harness) -> None:
    client_id = await h.register()
    verifier, challenge = pkce_pair()
    code = await h.code(client_id, (verifier, challenge))
    first = await h.exchange(client_id, code, verifier)
    assert first.status_code == 200
    replay = await h.exchange(client_id, code, verifier)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    events = await h.events("oauth.code_replayed")
    assert events[0]["outcome"] == "denied"
    record = await h.ctx.tokens.access_record(first.json()["access_token"])
    assert record is not None and await h.ctx.tokens.is_denied(record["jti"])
    refreshed = await h.refresh(client_id, first.json()["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


@pytest.mark.anyio
async def test_code_redeemed_by_another_client_is_refused(h: Harness) -> None:
    client_id = await h.register()
    other = await h.register()
    verifier, challenge = pkce_pair()
    code = await h.code(client_id, (verifier, challenge))
    response = await h.exchange(other, code, verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


@pytest.mark.anyio
async def test_redirect_uri_mismatch_at_token_is_refused(h: Harness) -> None:
    client_id = await h.register()
    verifier, challenge = pkce_pair()
    code = await h.code(client_id, (verifier, challenge))
    response = await h.exchange(client_id, code, verifier, redirect_uri="http://127.0.0.1:1/x")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


@pytest.mark.anyio
async def test_unregistered_redirect_gets_an_error_page_never_a_redirect(h: Harness) -> None:
    client_id = await h.register()
    for uri in (
        "https://evil.example/cb",
        "http://127.0.0.1:53682/other",
        "http://evil.example/callback",
    ):
        response = await h.authorize(client_id, redirect_uri=uri)
        assert response.status_code == 400
        assert "location" not in response.headers
        assert "evil" not in response.text
    events = await h.events("oauth.request_failed", 3)
    assert {e["details"]["error"] for e in events} == {"invalid_redirect_uri"}


@pytest.mark.anyio
async def test_loopback_redirect_may_use_any_port(h: Harness) -> None:
    client_id = await h.register()
    response = await h.authorize(client_id, redirect_uri="http://127.0.0.1:40000/callback")
    assert response.status_code == 200 and 'name="password"' in response.text


@pytest.mark.anyio
async def test_unknown_client_gets_an_error_page(h: Harness) -> None:
    response = await h.authorize("no-such-client")
    assert response.status_code == 400 and "location" not in response.headers


@pytest.mark.anyio
async def test_codes_live_sixty_seconds_at_most(h: Harness) -> None:
    client_id = await h.register()
    await h.code(client_id, pkce_pair())
    keys = [k async for k in h.redis.scan_iter("auth:code:*")]
    assert len(keys) == 1
    assert 0 < await h.redis.ttl(keys[0]) <= 60
    assert re.fullmatch(rb"[0-9a-f]{64}", keys[0].split(b":")[-1])  # its SHA-256, not the code


@pytest.mark.anyio
async def test_repeated_authorize_parameters_get_an_error_page(h: Harness) -> None:
    client_id = await h.register()
    response = await h.client.get(f"/authorize?client_id={client_id}&client_id=other")
    assert response.status_code == 400 and "location" not in response.headers
