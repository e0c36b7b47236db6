"""What goes wrong between auth and the organisation's OpenID provider (the real
oidc-provider of deploy/test-idp, which advertises RFC 9207 and always sends `iss`):

- a mix-up: the provider's answer arriving without `iss`, or naming another issuer, is
  refused before its code is redeemed, and the sign-in cannot be finished with it later;
- the provider going down between the person's sign-in there and our token exchange: a
  clear page, Cancel sends the client `access_denied`, and an audit event says why;
- nothing auth logs carries a code, a state, or a token (its container's logs, grepped).

Driven at the HTTP level (signin_flow.Flow), so each test can stop at any step."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import anyio
import pytest

from tests.integration.audit_api import AuditApi, now
from tests.integration.conftest import Stack
from tests.integration.idp import ALICE, Idp
from tests.integration.signin_flow import Flow

pytestmark = pytest.mark.anyio
PROVIDER = "Example Corp"
SEEN: list[str] = []  # every code, state and token these tests saw, for the log check


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def flow(stack: Stack, idp: Idp) -> Iterator[Flow]:
    with idp.client(follow_redirects=False) as http:
        value = Flow(stack, http)
        value.register()
        yield value


def _provider_answer(flow: Flow, idp: Idp) -> str:
    """Alice signs in at the provider; its redirect back to our callback (not followed)."""
    answer = idp.sign_in(flow.http, flow.start(PROVIDER), ALICE.username, ALICE.password)
    assert answer.status_code in (302, 303), answer.text
    location = answer.headers["location"]
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert params["iss"] == idp.issuer  # the provider names itself (RFC 9207)
    SEEN.extend([params["code"], params["state"]])
    return location


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.mark.parametrize(
    ("iss", "reason"),
    [
        ("http://idp.attacker.example", "authorization response from another issuer (RFC 9207)"),
        (None, "authorization response without iss (RFC 9207)"),
    ],
)
async def test_an_answer_without_the_providers_iss_is_refused_and_spent(
    stack: Stack, idp: Idp, flow: Flow, audit: AuditApi, iss: str | None, reason: str
) -> None:
    """Mix-up: the provider's code and state, delivered as if another issuer sent them."""
    since = now()
    answer = _provider_answer(flow, idp)
    page = flow.http.get(_with_query(answer, iss=iss))
    assert page.status_code == 401, page.text
    assert f"not from {PROVIDER}" in page.text and "decision" not in page.text
    (refused,) = await audit.wait_for(
        "auth.login", since=since, outcome="failure",
        where=lambda e: e["details"].get("reason") == reason,
    )  # fmt: skip
    assert refused["details"]["provider"] == "corp"
    # The state was spent by the refusal: the genuine answer cannot finish the sign-in now.
    again = flow.http.get(answer)
    assert again.status_code == 400 and "expired or was started elsewhere" in again.text
    # Cancel on the refusal page tells the client, with our own iss.
    back = flow.cancel(page)
    assert back["error"] == "access_denied" and back["state"] == flow.state
    assert back["iss"] == stack.urls["auth"]


async def test_the_provider_going_down_before_the_token_exchange_gives_a_clear_page(
    stack: Stack, idp: Idp, flow: Flow, audit: AuditApi
) -> None:
    since = now()
    answer = _provider_answer(flow, idp)
    await anyio.to_thread.run_sync(lambda: stack.run("stop", "idp"))
    try:
        page = flow.http.get(answer)
    finally:
        await anyio.to_thread.run_sync(lambda: stack.run("up", "--wait", "idp"))
    assert page.status_code == 503, page.text
    assert "cannot be reached right now" in page.text
    assert "Traceback" not in page.text and "ConnectError" not in page.text
    back = flow.cancel(page)
    assert back["error"] == "access_denied" and back["state"] == flow.state
    (error,) = await audit.wait_for(
        "auth.login", since=since, outcome="error",
        where=lambda e: e["details"].get("method") == "oidc",
    )  # fmt: skip
    assert error["details"]["reason"] == "provider unreachable"
    assert error["client_id"] == flow.client_id


async def test_a_whole_sign_in_works_and_leaves_no_code_or_token_in_the_logs(
    stack: Stack, idp: Idp, flow: Flow
) -> None:
    """The happy path once more (the provider is back), then auth's logs are grepped for
    every code, state and token these tests saw, and for any JWT at all."""
    consent = flow.http.get(_provider_answer(flow, idp))
    assert consent.status_code == 200 and "decision" in consent.text, consent.text
    back = flow.consent(consent)
    tokens = flow.tokens(back["code"])
    SEEN.extend([back["code"], tokens["access_token"], tokens["refresh_token"]])
    logs = await anyio.to_thread.run_sync(lambda: stack.logs("auth"))
    assert "federated" in logs  # the log is the one that served these requests
    leaked = [value[:8] for value in SEEN if value in logs]
    assert leaked == []
    # The provider's ID tokens, access tokens and ours are JWTs: none is in the log.
    assert "eyJ" not in logs
