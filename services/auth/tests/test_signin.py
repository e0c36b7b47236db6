"""Sign-in as an attacker would try it: parallel guessing, a borrowed session cookie, a
malformed link from a self-registered client; and what the pages promise a person."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import pytest
from services.auth.tests.helpers import (
    ADMIN_PASSWORD,
    REDIRECT,
    TOOLS,
    Harness,
    hidden_inputs,
)


def _query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def _login_form(h: Harness, client_id: str, **params: str | None) -> dict[str, str]:
    page = await h.authorize(client_id, **params)
    assert page.status_code == 200 and 'name="password"' in page.text, page.text
    return hidden_inputs(page.text)


@pytest.mark.anyio
async def test_a_parallel_burst_of_guesses_gets_at_most_threshold_evaluations(h: Harness) -> None:
    client_id = await h.register()
    forms = [await _login_form(h, client_id) for _ in range(25)]
    responses = await asyncio.gather(
        *(
            h.client.post("/login", data={**f, "username": "admin", "password": "wrong-pass-1"})
            for f in forms
        )
    )
    codes = [r.status_code for r in responses]
    threshold = h.ctx.settings.lockout_threshold
    assert codes.count(401) <= threshold and codes.count(429) >= 25 - threshold, codes
    assert set(codes) == {401, 429}
    # The right password is refused while the account is locked, and clears nothing.
    right = await h.client.post(
        "/login",
        data={**await _login_form(h, client_id), "username": "admin", "password": ADMIN_PASSWORD},
    )
    assert right.status_code == 429
    assert await h.redis.exists("auth:lock:acct_until:admin")
    evaluated = [e for e in await h.events("auth.login", 26) if e["outcome"] == "failure"]
    assert len(evaluated) <= threshold


@pytest.mark.anyio
async def test_spellings_of_one_account_are_one_principal_in_the_audit_record(
    h: Harness,
) -> None:
    client_id = await h.register()
    for typed in ("Admin", "ADMIN", " admin", "aDmIn"):
        form = await _login_form(h, client_id)
        response = await h.client.post(
            "/login", data={**form, "username": typed, "password": "wrong-pass-1"}
        )
        assert response.status_code == 401
    events = await h.events("auth.login", 4)
    assert {e["principal"] for e in events} == {"admin"}


@pytest.mark.anyio
async def test_a_signed_in_cookie_cannot_answer_another_request(h: Harness) -> None:
    """A loopback client on the issuer's host gets the browser's cookies (cookies ignore
    ports). Holding the cookie of a person who signed in for request A, it starts its own
    request B, reads B's CSRF token off the page and posts Allow: refused."""
    client_id = await h.register()
    form_a = await _login_form(h, client_id)
    consent_a = await h.client.post(
        "/login", data={**form_a, "username": "admin", "password": ADMIN_PASSWORD}
    )
    assert consent_a.status_code == 200 and 'value="allow"' in consent_a.text
    stolen = h.client.cookies["bastion_session"]
    # Request B, driven by the thief with the stolen cookie: a login page, not consent.
    page_b = await h.authorize(client_id, resource="http://localhost:8001/admin")
    assert page_b.status_code == 200 and 'name="password"' in page_b.text
    assert 'value="allow"' not in page_b.text
    assert h.client.cookies["bastion_session"] == stolen
    answer = await h.client.post(
        "/consent", data={**hidden_inputs(page_b.text), "decision": "allow"}
    )
    assert answer.status_code == 200 and "location" not in answer.headers
    assert 'name="password"' in answer.text
    assert not [e for e in await h.all_events() if e["type"] == "oauth.code_issued"]


@pytest.mark.anyio
async def test_a_completed_flow_leaves_no_session_behind(h: Harness) -> None:
    client_id = await h.register()
    form = await _login_form(h, client_id)
    consent = await h.client.post(
        "/login", data={**form, "username": "admin", "password": ADMIN_PASSWORD}
    )
    stolen = h.client.cookies["bastion_session"]
    done = await h.client.post(
        "/consent", data={**hidden_inputs(consent.text), "decision": "allow"}
    )
    assert done.status_code == 302 and "code" in _query(done.headers["location"])
    # The redirect itself deletes the cookie, before the browser reaches the client.
    assert 'bastion_session=""' in done.headers["set-cookie"]
    assert "max-age=0" in done.headers["set-cookie"].lower()
    assert not await h.redis.exists(f"auth:session:{stolen}")
    h.client.cookies.set("bastion_session", stolen)
    again = await h.authorize(client_id)
    assert 'name="password"' in again.text and 'value="allow"' not in again.text


@pytest.mark.anyio
async def test_cancel_on_the_login_page_returns_access_denied(h: Harness) -> None:
    client_id = await h.register()
    form = await _login_form(h, client_id)
    response = await h.client.post("/login", data={**form, "action": "cancel"})
    assert response.status_code == 302
    q = _query(response.headers["location"])
    assert response.headers["location"].startswith(REDIRECT)
    assert q["error"] == "access_denied" and q["state"] == "st-123"
    assert q["iss"] == "http://localhost:8001"
    again = await h.client.post("/login", data={**form, "action": "cancel"})
    assert again.status_code == 403 and "location" not in again.headers


@pytest.mark.anyio
async def test_sign_out_on_the_consent_page_asks_again(h: Harness) -> None:
    client_id = await h.register()
    form = await _login_form(h, client_id)
    consent = await h.client.post(
        "/login", data={**form, "username": "admin", "password": ADMIN_PASSWORD}
    )
    fields = hidden_inputs(consent.text)
    login = await h.client.post("/logout", data=fields)
    assert login.status_code == 200 and 'name="password"' in login.text
    events = await h.events("auth.logout")
    assert events[0]["principal"] == "admin"
    # The consent form of the signed-out session is dead.
    answer = await h.client.post("/consent", data={**fields, "decision": "allow"})
    assert answer.status_code == 403 and "location" not in answer.headers


@pytest.mark.anyio
async def test_a_malformed_link_for_a_self_registered_client_is_not_a_redirect(
    h: Harness,
) -> None:
    """RFC 9700 §4.11.2: DCR with an https redirect, then a broken /authorize link."""
    client_id = await h.register(redirect_uris=["https://phish.example/landing"])
    for broken in (
        {"response_type": "token"},
        {"code_challenge_method": "plain"},
        {"resource": "https://elsewhere.example/"},
    ):
        response = await h.authorize(
            client_id, redirect_uri="https://phish.example/landing", **broken
        )
        assert response.status_code == 400, broken
        assert "location" not in response.headers
        assert "phish.example" not in response.text


@pytest.mark.anyio
async def test_pages_allow_forms_to_reach_only_this_origin_and_the_request_redirect(
    h: Harness,
) -> None:
    client_id = await h.register(redirect_uris=["http://localhost:43210/cb"])
    page = await h.authorize(client_id, redirect_uri="http://localhost:43210/cb")
    policy = page.headers["content-security-policy"]
    assert "form-action 'self' http://localhost:43210;" in policy
    assert "script-src" not in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy and "style-src 'self'" in policy
    error = await h.client.get("/authorize", params={"client_id": "nobody"})
    assert "form-action 'self';" in error.headers["content-security-policy"]
    css = await h.client.get("/static/bastion.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "<script" not in page.text and "style=" not in page.text


@pytest.mark.anyio
async def test_a_private_use_redirect_scheme_is_allowed_by_scheme(h: Harness) -> None:
    client_id = await h.register(redirect_uris=["com.example.agent:/oauth/cb"])
    page = await h.authorize(client_id, redirect_uri="com.example.agent:/oauth/cb")
    assert "form-action 'self' com.example.agent:;" in page.headers["content-security-policy"]


@pytest.mark.anyio
async def test_consent_tells_the_person_what_they_are_agreeing_to(h: Harness) -> None:
    client_id = await h.register(client_name="Acme Agent")
    form = await _login_form(h, client_id, scope="files:read files:write")
    consent = await h.client.post(
        "/login", data={**form, "username": "admin", "password": ADMIN_PASSWORD}
    )
    text = consent.text
    assert "Acme Agent" in text and "unverified" in text
    assert "127.0.0.1:53682" in text  # the redirect host
    assert "MCP tools" in text and TOOLS in text
    assert "List and read files in the sandbox" in text and "Write files in the sandbox" in text
    assert "7 days" in text  # a refresh token comes with it
    assert 'action="/logout"' in text and "Not admin?" in text
    assert text.index('value="allow"') < text.index('value="deny"')  # Enter means Allow
    short = await h.register(grant_types=["authorization_code"])
    form = await _login_form(h, short)
    consent = await h.client.post(
        "/login", data={**form, "username": "admin", "password": ADMIN_PASSWORD}
    )
    assert "30 minutes, then the application must ask you again" in consent.text
