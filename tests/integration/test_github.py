"""Sign-in with GitHub through auth, end to end: our login page, GitHub's authorize page and
token endpoint and REST API (a stand-in serving their documented shapes, standins.py, that
the auth container reaches over the network), our consent page, our token, and the tools
service accepting it with the roles the person's GitHub team gives."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx2
import pytest

from tests.integration.audit_api import AuditApi, now
from tests.integration.conftest import Stack
from tests.integration.idp import ALICE, Idp
from tests.integration.mcp_http import McpHttp
from tests.integration.oauth import pkce_pair
from tests.integration.signin_flow import Flow
from tests.integration.standins import GitHubStandIn, GitHubUser, parse_redirect

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def octo(github: GitHubStandIn) -> Iterator[GitHubUser]:
    user = GitHubUser(
        5150,
        "octo-dev",
        [
            {"email": "octo@users.noreply.example", "primary": False, "verified": True},
            {"email": "octo@acme.example", "primary": True, "verified": True, "visibility": None},
        ],
        orgs=["acme"],
        teams=["acme/platform"],
    )
    github.users[user.login] = user
    github.signed_in = user.login
    try:
        yield user
    finally:
        github.signed_in = None
        github.revoke_tokens(user.login)


@pytest.fixture
def flow(stack: Stack) -> Iterator[Flow]:
    with httpx2.Client(timeout=10, follow_redirects=False) as http:
        value = Flow(stack, http)
        value.register()
        yield value


def _sign_in(flow: Flow) -> dict[str, str]:
    at_github = flow.start("GitHub")
    assert at_github.startswith(f"http://localhost:{flow.stack.env['GITHUB_PORT']}/login/oauth/")
    answer = flow.http.get(at_github)  # GitHub approves at once as the signed-in user
    assert answer.status_code == 302, answer.text
    callback = answer.headers["location"]
    assert callback.startswith(f"{flow.stack.urls['auth']}/federated/callback/github?")
    consent = flow.http.get(callback)
    assert consent.status_code == 200 and "decision" in consent.text, consent.text
    back = flow.consent(consent)
    assert back["state"] == flow.state and back["iss"] == flow.stack.urls["auth"]
    tokens = flow.tokens(back["code"])
    tokens["_github_code"] = parse_redirect(callback)["code"]
    return tokens


async def test_a_github_team_member_signs_in_and_the_tools_service_honours_the_team_role(
    stack: Stack, github: GitHubStandIn, octo: GitHubUser, flow: Flow, audit: AuditApi
) -> None:
    since = now()
    tokens = _sign_in(flow)
    mcp = McpHttp(f"{stack.urls['tools']}/mcp", tokens["access_token"])
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await mcp.initialize(http)).status == 200
        listed = {t["name"] for t in (await mcp.list_tools(http)).result["tools"]}
        wrote = await mcp.call_tool(
            http, "report_weather", {"city": "Oslo", "temperature_c": 3.5, "condition": "snow"}
        )
    assert "report_weather" in listed  # weather:write: premium, from the acme/platform team
    assert wrote.status == 200 and not wrote.result.get("isError"), wrote.body
    (login,) = await audit.wait_for(
        "auth.login", since=since, outcome="success",
        where=lambda e: e["details"].get("method") == "github",
    )  # fmt: skip
    assert login["principal"] == "octo-dev@github"
    assert login["details"]["roles"] == ["premium", "user"]
    # GitHub's token, GitHub's code and ours never reach a log line.
    logs = await anyio.to_thread.run_sync(lambda: stack.logs("auth"))
    secrets_seen = [*github.tokens, tokens["_github_code"], tokens["access_token"]]
    assert [s[:6] for s in secrets_seen if s in logs] == []
    assert "gho_" not in logs


async def test_leaving_the_team_takes_the_role_away_at_the_next_refresh(
    stack: Stack, github: GitHubStandIn, octo: GitHubUser, flow: Flow
) -> None:
    tokens = _sign_in(flow)
    octo.teams = []
    refreshed = flow.http.post(
        f"{stack.urls['auth']}/token",
        data={"grant_type": "refresh_token", "client_id": flow.client_id,
              "refresh_token": tokens["refresh_token"]},
    )  # fmt: skip
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["scope"].split() == ["files:read", "weather:read"]
    # Revoking the app at GitHub ends our grant at the refresh after.
    github.revoke_tokens(octo.login)
    ended = flow.http.post(
        f"{stack.urls['auth']}/token",
        data={"grant_type": "refresh_token", "client_id": flow.client_id,
              "refresh_token": refreshed.json()["refresh_token"]},
    )  # fmt: skip
    assert ended.status_code == 400 and ended.json()["error"] == "invalid_grant"


async def test_someone_outside_the_org_gets_a_clear_page_and_the_client_access_denied(
    github: GitHubStandIn, flow: Flow, audit: AuditApi
) -> None:
    since = now()
    github.users["stranger"] = GitHubUser(
        6262, "stranger", [{"email": "s@acme.example", "primary": True, "verified": False}]
    )
    github.signed_in = "stranger"
    try:
        answer = flow.http.get(flow.start("GitHub"))
        page = flow.http.get(answer.headers["location"])
    finally:
        github.signed_in = None
    assert page.status_code == 401 and "not allowed to use this server" in page.text
    assert flow.cancel(page)["error"] == "access_denied"
    (refused,) = await audit.wait_for(
        "auth.login", since=since, outcome="failure",
        where=lambda e: e["details"].get("method") == "github",
    )  # fmt: skip
    assert refused["details"]["reason"] == "not allowed by the provider's allowlist"


async def test_a_mix_up_sending_the_corp_providers_answer_into_a_github_sign_in_is_refused(
    stack: Stack, github: GitHubStandIn, idp: Idp, audit: AuditApi
) -> None:
    """The classic mix-up (RFC 9700 §4.4.1) with two real providers: a sign-in started
    with GitHub is sent (by a GitHub that is not honest) to the organisation's provider
    with our own state; the answer comes back at the OpenID callback with a genuine code.
    Redeeming it would hand the code to GitHub's token endpoint: it is refused first."""
    since = now()
    github.requests.clear()
    with idp.client(follow_redirects=False) as http:
        flow = Flow(stack, http)
        flow.register()
        at_github = flow.start("GitHub")
        state = parse_qs(urlsplit(at_github).query)["state"][0]
        query = {
            "response_type": "code", "client_id": idp.client_id,
            "redirect_uri": f"{stack.urls['auth']}/federated/callback",
            "scope": "openid profile email groups", "state": state, "nonce": "attacker-nonce",
            "code_challenge": pkce_pair()[1], "code_challenge_method": "S256",
        }  # fmt: skip
        endpoint = idp.discovery()["authorization_endpoint"]
        answer = idp.sign_in(http, f"{endpoint}?{urlencode(query)}", ALICE.username, ALICE.password)
        callback = answer.headers["location"]
        assert callback.startswith(f"{stack.urls['auth']}/federated/callback?"), callback
        page = http.get(callback)
    assert page.status_code == 401 and "is not from GitHub" in page.text
    assert ("POST", "/login/oauth/access_token") not in github.requests
    (refused,) = await audit.wait_for(
        "auth.login", since=since, outcome="failure",
        where=lambda e: e["details"].get("provider") == "github",
    )  # fmt: skip
    assert refused["details"]["reason"] == "answer arrived at another provider's redirect URI"
