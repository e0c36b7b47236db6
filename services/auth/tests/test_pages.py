from __future__ import annotations

from pathlib import Path

import pytest
from services.auth.tests.helpers import (
    ADMIN_PASSWORD,
    Harness,
    harness,
    hidden_inputs,
    make_settings,
)


@pytest.mark.anyio
async def test_login_page_has_security_headers_and_a_locked_down_cookie(h: Harness) -> None:
    client_id = await h.register()
    page = await h.authorize(client_id)
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # http issuer in tests; https issuers get Secure
    assert 'name="username"' in page.text and 'name="password"' in page.text


@pytest.mark.anyio
async def test_login_without_the_csrf_token_is_refused(h: Harness) -> None:
    client_id = await h.register()
    page = await h.authorize(client_id)
    fields = hidden_inputs(page.text)
    fields["csrf_token"] = "0" * 64
    response = await h.client.post(
        "/login", data={**fields, "username": "admin", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 403
    events = await h.events("oauth.request_failed")
    assert events[0]["details"]["error"] == "csrf"
    assert not [e for e in await h.all_events() if e["type"] == "auth.login"]


@pytest.mark.anyio
async def test_login_from_another_browser_session_is_refused(h: Harness) -> None:
    client_id = await h.register()
    page = await h.authorize(client_id)
    h.client.cookies.clear()
    response = await h.client.post(
        "/login", data={**hidden_inputs(page.text), "username": "admin", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 403


@pytest.mark.anyio
async def test_consent_without_the_csrf_token_is_refused(h: Harness) -> None:
    client_id = await h.register()
    page = await h.authorize(client_id)
    consent = await h.client.post(
        "/login", data={**hidden_inputs(page.text), "username": "admin", "password": ADMIN_PASSWORD}
    )
    assert consent.status_code == 200 and 'value="allow"' in consent.text
    fields = hidden_inputs(consent.text)
    fields["csrf_token"] = fields["csrf_token"][::-1]
    response = await h.client.post("/consent", data={**fields, "decision": "allow"})
    assert response.status_code == 403 and "location" not in response.headers


@pytest.mark.anyio
async def test_consent_lists_client_resource_and_scopes_in_words(h: Harness) -> None:
    client_id = await h.register(client_name="Acme <b>Agent</b>")
    page = await h.authorize(client_id, scope="files:read")
    consent = await h.client.post(
        "/login", data={**hidden_inputs(page.text), "username": "admin", "password": ADMIN_PASSWORD}
    )
    assert "Acme &lt;b&gt;Agent&lt;/b&gt;" in consent.text
    assert "http://localhost:8003/mcp" in consent.text
    assert "List and read files in the sandbox" in consent.text


@pytest.mark.anyio
async def test_denied_consent_redirects_with_access_denied(h: Harness) -> None:
    client_id = await h.register()
    page = await h.authorize(client_id)
    consent = await h.client.post(
        "/login", data={**hidden_inputs(page.text), "username": "admin", "password": ADMIN_PASSWORD}
    )
    response = await h.client.post(
        "/consent", data={**hidden_inputs(consent.text), "decision": "deny"}
    )
    assert response.status_code == 302
    assert (
        "error=access_denied" in response.headers["location"]
        and "state=st-123" in response.headers["location"]
    )
    events = await h.events("auth.consent")
    assert events[0]["outcome"] == "denied"


@pytest.mark.anyio
async def test_session_id_changes_at_login(h: Harness) -> None:
    client_id = await h.register()
    page = await h.authorize(client_id)
    before = h.client.cookies["bastion_session"]
    await h.client.post(
        "/login", data={**hidden_inputs(page.text), "username": "admin", "password": ADMIN_PASSWORD}
    )
    assert h.client.cookies["bastion_session"] != before


async def _login(h: Harness, username: str, password: str) -> int:
    client_id = await h.register()
    page = await h.authorize(client_id)
    response = await h.client.post(
        "/login", data={**hidden_inputs(page.text), "username": username, "password": password}
    )
    return response.status_code


@pytest.mark.anyio
async def test_account_is_locked_after_five_failures_and_unknown_users_look_the_same(
    h: Harness,
) -> None:
    for _ in range(5):
        assert await _login(h, "admin", "wrong-password-1") == 401
        assert await _login(h, "nobody", "wrong-password-1") == 401
    # Locked now: even the right password is refused, and a made-up name behaves alike.
    assert await _login(h, "admin", ADMIN_PASSWORD) == 429
    assert await _login(h, "nobody", "wrong-password-1") == 429
    lockouts = await h.events("auth.lockout", 2)
    assert {e["principal"] for e in lockouts} == {"admin", "nobody"}
    assert all(e["details"]["scope"] == "account" for e in lockouts)
    denied = await h.events("auth.login", 12)
    assert any(e["outcome"] == "denied" for e in denied)


@pytest.mark.anyio
async def test_failures_per_client_ip_are_limited(redis_url: str, tmp_path: Path) -> None:
    async with harness(make_settings(redis_url, tmp_path, ip_failure_limit=3)) as h:
        for name in ("u1", "u2", "u3"):
            assert await _login(h, name, "wrong-password-1") == 401
        assert await _login(h, "admin", ADMIN_PASSWORD) == 429
        events = await h.events("auth.lockout")
        assert events[0]["details"]["scope"] == "ip" and events[0]["ip"] == "203.0.113.7"


@pytest.mark.anyio
async def test_disabled_user_cannot_log_in(h: Harness) -> None:
    await h.ctx.users.create("carol", "carol-password-1", ["user"])
    await h.ctx.users.update("carol", disabled=True)
    assert await _login(h, "carol", "carol-password-1") == 401


@pytest.mark.anyio
async def test_lock_delay_grows_with_each_further_failure(h: Harness) -> None:
    delays = []
    for _ in range(8):
        # Each lock is allowed to run out before the next attempt.
        await h.redis.delete("auth:lock:acct_until:mallory")
        delays.append((await h.ctx.lockout.reserve("mallory", "198.51.100.1")).locked_seconds)
    assert delays == [0, 0, 0, 0, 30, 60, 120, 240]
    assert await h.redis.ttl("auth:lock:acct_until:mallory") > 200


@pytest.mark.anyio
async def test_the_session_cookie_is_secure_on_an_https_issuer(
    redis_url: str, tmp_path: Path
) -> None:
    async with harness(make_settings(redis_url, tmp_path, public_url="https://auth.example")) as h:
        client_id = await h.register()
        page = await h.authorize(client_id)
        assert "secure" in page.headers["set-cookie"].lower()


@pytest.mark.anyio
async def test_garbage_at_every_form_endpoint_gets_a_clean_error(h: Harness) -> None:
    for path in ("/login", "/consent", "/token", "/revoke", "/introspect"):
        response = await h.client.post(
            path,
            content=b"\xff\x00" * 5000,
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert "Traceback" not in response.text and 'File "' not in response.text
