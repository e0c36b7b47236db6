"""Sign-in with GitHub (plain OAuth 2.0, identity from its REST API), in process against a
stand-in that serves GitHub's documented shapes over real HTTP (tests/integration/standins).

Attacks: a login renamed or reused by someone else, an unverified email, a person outside
the allowed organisation, a GitHub answer delivered at another provider's redirect URI
(mix-up) or carrying an `iss`, a code GitHub refuses (HTTP 200 with an error), a token
revoked at GitHub before our refresh."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from services.auth.tests.helpers import (
    REDIRECT,
    Harness,
    harness,
    hidden_inputs,
    make_settings,
    pkce_pair,
)

from tests.integration.standins import GitHubStandIn, GitHubUser, parse_redirect

pytestmark = pytest.mark.anyio
SECRET_ENV = "AUTH_GITHUB_UNIT_SECRET"
CLIENT_SECRET = "gh-client-secret-" + "Wq8Lp2Zx9Rt4Yb6N"
ISSUER = "http://localhost:8001"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    server = GitHubStandIn("Iv1.unit", CLIENT_SECRET, f"{ISSUER}/federated/callback")
    server.users["octo"] = GitHubUser(
        101,
        "octo",
        [
            {"email": "octo@old.example", "primary": False, "verified": True, "visibility": None},
            {"email": "octo@acme.example", "primary": True, "verified": True, "visibility": None},
        ],
        orgs=["acme"],
        teams=["acme/platform"],
    )
    server.users["mallory"] = GitHubUser(
        303,
        "mallory",
        [{"email": "boss@acme.example", "primary": True, "verified": False, "visibility": None}],
        orgs=["evil-corp"],
    )
    server.signed_in = "octo"
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def h(
    redis_url: str, tmp_path: Path, github: GitHubStandIn, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
    provider = {
        "kind": "github",
        "id": "github",
        "name": "GitHub",
        "client_id": "Iv1.unit",
        "client_secret_env": SECRET_ENV,
        "authorize_url": f"{github.url}/login/oauth/authorize",
        "token_url": f"{github.url}/login/oauth/access_token",
        "api_url": github.url,
        "allowed_groups": ["acme"],
        "role_rules": [{"claim": "groups", "value": "acme/platform", "role": "premium"}],
    }
    settings = make_settings(redis_url, tmp_path, oidc_providers=[provider], oidc_allow_http=True)
    async with harness(settings) as value:
        yield value


async def _to_github(h: Harness, client_id: str, challenge: str) -> str:
    """Our login page, its "Sign in with GitHub" link: the URL it sends the browser to."""
    page = await h.authorize(client_id, code_challenge=challenge)
    match = re.search(r'href="(/federated/start\?[^"]+)"', page.text)
    assert match, page.text
    start = await h.client.get(unescape(match.group(1)))
    assert start.status_code == 303, start.text
    return start.headers["location"]


async def _github_answer(h: Harness, client_id: str, challenge: str) -> str:
    """The path and query GitHub sends the browser back to (not followed)."""
    target = await _to_github(h, client_id, challenge)
    async with httpx2.AsyncClient() as browser:
        answer = await browser.get(target)
    assert answer.status_code == 302, answer.text
    parts = urlsplit(answer.headers["location"])
    return f"{parts.path}?{parts.query}"


async def _sign_in(h: Harness) -> dict[str, Any]:
    """The whole flow through GitHub; returns our token response."""
    client_id = await h.register()
    verifier, challenge = pkce_pair()
    consent = await h.client.get(await _github_answer(h, client_id, challenge))
    assert consent.status_code == 200 and "decision" in consent.text, consent.text
    done = await h.client.post(
        "/consent", data={**hidden_inputs(consent.text), "decision": "allow"}
    )
    assert done.status_code == 302 and done.headers["location"].startswith(REDIRECT)
    code = parse_redirect(done.headers["location"])["code"]
    response = await h.exchange(client_id, code, verifier)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    body["client_id"] = client_id
    return body


async def test_a_github_member_signs_in_with_the_roles_of_their_team(
    h: Harness, github: GitHubStandIn
) -> None:
    tokens = await _sign_in(h)
    record = await h.ctx.tokens.access_record(tokens["access_token"])
    assert record is not None
    assert record["sub"] == "octo@github" and record["roles"] == ["premium", "user"]
    (login,) = await h.events("auth.login")
    assert login["outcome"] == "success" and login["details"]["method"] == "github"
    # PKCE reached GitHub, the API was asked with the token, and nothing leaked to audit.
    assert ("POST", "/login/oauth/access_token") in github.requests
    assert ("GET", "/user/teams") in github.requests
    every = str(await h.all_events())
    assert not any(token in every for token in github.tokens)


async def test_a_renamed_login_keeps_its_account_and_a_reused_login_gets_another(
    h: Harness, github: GitHubStandIn
) -> None:
    """Linked by GitHub's numeric id: a login is a name anyone can take once it is free."""
    first = await h.ctx.tokens.access_record((await _sign_in(h))["access_token"])
    github.users["octo"].login = "octo-renamed"
    renamed = await h.ctx.tokens.access_record((await _sign_in(h))["access_token"])
    github.users["octo"] = GitHubUser(
        999, "octo", [{"email": "x@acme.example", "primary": True, "verified": True}], ["acme"]
    )
    impostor = await h.ctx.tokens.access_record((await _sign_in(h))["access_token"])
    assert first and renamed and impostor
    assert first["sub"] == renamed["sub"] == "octo@github"
    assert impostor["sub"] not in (first["sub"], "octo@github")
    assert impostor["roles"] == ["user"]  # not octo's team: not octo's roles


async def test_someone_outside_the_allowed_org_is_refused_whatever_email_they_claim(
    h: Harness, github: GitHubStandIn
) -> None:
    github.signed_in = "mallory"  # an unverified acme.example address, another org
    client_id = await h.register()
    page = await h.client.get(await _github_answer(h, client_id, pkce_pair()[1]))
    assert page.status_code == 401 and "not allowed to use this server" in page.text
    assert "decision" not in page.text
    (refused,) = await h.events("auth.login")
    assert refused["outcome"] == "failure"
    assert refused["details"]["reason"] == "not allowed by the provider's allowlist"
    assert not await h.ctx.users.get("mallory@github")


async def test_a_github_answer_at_the_shared_callback_is_refused_before_the_code_is_used(
    h: Harness, github: GitHubStandIn
) -> None:
    """Mix-up (RFC 9700 §4.4.2.2): GitHub's answer arriving where OpenID providers answer."""
    client_id = await h.register()
    answer = await _github_answer(h, client_id, pkce_pair()[1])
    moved = answer.replace("/federated/callback/github?", "/federated/callback?")
    page = await h.client.get(moved)
    assert page.status_code == 401 and "is not from GitHub" in page.text
    assert ("POST", "/login/oauth/access_token") not in github.requests
    (refused,) = await h.events("auth.login")
    assert refused["details"]["reason"] == "answer arrived at another provider's redirect URI"


async def test_a_github_answer_that_names_an_issuer_is_refused(
    h: Harness, github: GitHubStandIn
) -> None:
    client_id = await h.register()
    answer = await _github_answer(h, client_id, pkce_pair()[1])
    page = await h.client.get(f"{answer}&iss=https%3A%2F%2Fidp.attacker.example")
    assert page.status_code == 401 and "is not from GitHub" in page.text
    assert ("POST", "/login/oauth/access_token") not in github.requests


async def test_a_code_github_refuses_gives_a_clear_page(h: Harness, github: GitHubStandIn) -> None:
    """GitHub says no with HTTP 200 and an `error` field: that is a refusal, not a token."""
    client_id = await h.register()
    answer = await _github_answer(h, client_id, pkce_pair()[1])
    forged = re.sub(r"code=[0-9a-f]+", "code=0000000000aaaaaaaaaa", answer)
    page = await h.client.get(forged)
    assert page.status_code == 401 and "did not confirm the sign-in" in page.text
    (refused,) = await h.events("auth.login")
    assert refused["details"]["reason"] == "token endpoint refused: bad_verification_code"


async def test_the_team_decides_at_every_refresh_and_a_revoked_token_ends_the_grant(
    h: Harness, github: GitHubStandIn
) -> None:
    tokens = await _sign_in(h)
    github.users["octo"].teams = []  # left the platform team
    refreshed = await h.refresh(tokens["client_id"], tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    record = await h.ctx.tokens.access_record(refreshed.json()["access_token"])
    assert record is not None and record["roles"] == ["user"]
    github.revoke_tokens("octo")
    again = await h.refresh(tokens["client_id"], refreshed.json()["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    (ended,) = await h.events("token.refresh_refused")
    assert ended["outcome"] == "denied" and ended["details"]["reason"] == "GitHub API refused /user"


async def test_githubs_form_encoded_token_answer_is_understood(
    h: Harness, github: GitHubStandIn
) -> None:
    github.form_only = True
    tokens = await _sign_in(h)
    record = await h.ctx.tokens.access_record(tokens["access_token"])
    assert record is not None and record["sub"] == "octo@github"


async def test_a_form_encoded_refusal_is_still_a_refusal(h: Harness, github: GitHubStandIn) -> None:
    github.form_only = True
    client_id = await h.register()
    answer = await _github_answer(h, client_id, pkce_pair()[1])
    page = await h.client.get(re.sub(r"code=[0-9a-f]+", "code=ffffffffffffffffffff", answer))
    assert page.status_code == 401 and "did not confirm the sign-in" in page.text
