"""The test OpenID provider itself (deploy/test-idp), as auth's federated sign-in will use it:
discovery under the shared issuer name, authorization code + PKCE as the confidential client
`bastion`, real password checks, groups in the ID token, and a changed group seen at refresh.

The redirect URI is auth's /federated/callback; these tests stop at the provider's redirect
to it and never follow it.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest

from tests.integration.conftest import Stack
from tests.integration.idp import ALICE, BOB, Idp
from tests.integration.oauth import pkce_pair

SCOPE = "openid profile email groups offline_access"


def _part(jwt: str, index: int) -> dict[str, Any]:
    """A JWT part, unverified: these tests check what the provider puts in, auth verifies."""
    part = jwt.split(".")[index]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def _claims(jwt: str) -> dict[str, Any]:
    return _part(jwt, 1)


def _header(jwt: str) -> dict[str, Any]:
    return _part(jwt, 0)


@pytest.fixture
def provider(idp: Idp) -> Iterator[Idp]:
    idp.reset()
    try:
        yield idp
    finally:
        idp.reset()


def _authorize(idp: Idp, metadata: dict[str, Any], **extra: str) -> tuple[str, str, str, str]:
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": idp.client_id,
            "redirect_uri": idp.redirect_uri,
            "scope": SCOPE,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **extra,
        }
    )
    return f"{metadata['authorization_endpoint']}?{query}", verifier, state, nonce


def _sign_in(
    idp: Idp, metadata: dict[str, Any], username: str, password: str, **extra: str
) -> dict[str, Any]:
    """The whole code flow; returns the token response (and the request's nonce)."""
    url, verifier, state, nonce = _authorize(idp, metadata, **extra)
    with idp.client() as browser:
        redirect = idp.sign_in(browser, url, username, password)
    assert redirect.status_code in (302, 303), redirect.text
    location = redirect.headers["location"]
    assert location.startswith(f"{idp.redirect_uri}?")
    params = parse_qs(urlsplit(location).query)
    assert params["state"] == [state]
    assert params["iss"] == [idp.issuer]
    with idp.client() as http:
        # client_secret_post here; the refresh below uses client_secret_basic.
        response = http.post(
            metadata["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": params["code"][0],
                "redirect_uri": idp.redirect_uri,
                "code_verifier": verifier,
                "client_id": idp.client_id,
                "client_secret": idp.client_secret,
            },
        )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    tokens["_nonce"] = nonce
    return tokens


def test_discovery_names_the_shared_issuer(idp: Idp) -> None:
    response = httpx2.get(f"{idp.local_url}/.well-known/openid-configuration", timeout=10)
    assert response.status_code == 200
    metadata = response.json()
    assert metadata["issuer"] == idp.issuer
    assert metadata["issuer"].startswith("http://idp.bastion.test:")
    assert metadata["authorization_endpoint"].startswith(f"{idp.issuer}/")
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert {"openid", "groups", "offline_access"} <= set(metadata["scopes_supported"])
    assert "groups" in metadata["claims_supported"]
    # The same document through the issuer's name, as auth and the browser fetch it.
    assert idp.discovery() == metadata


def test_the_auth_container_reaches_the_same_issuer_by_its_name(stack: Stack, idp: Idp) -> None:
    script = (
        "import json, sys, urllib.request;"
        "print(json.load(urllib.request.urlopen(sys.argv[1], timeout=5))['issuer'])"
    )
    out = stack.exec("auth", "python", "-c", script, idp.discovery_url)
    assert out.strip() == idp.issuer


def test_code_flow_with_pkce_gives_groups_and_a_refresh_token_and_refresh_sees_new_groups(
    provider: Idp,
) -> None:
    idp = provider
    metadata = idp.discovery()
    tokens = _sign_in(idp, metadata, ALICE.username, ALICE.password)
    assert tokens["refresh_token"]
    id_token = _claims(tokens["id_token"])
    assert _header(tokens["id_token"])["alg"] == "RS256"
    assert id_token["iss"] == idp.issuer
    assert id_token["aud"] == idp.client_id
    assert id_token["nonce"] == tokens["_nonce"]
    assert id_token["sub"] == ALICE.sub
    assert id_token["groups"] == list(ALICE.groups)
    assert id_token["email"] == ALICE.email
    assert id_token["email_verified"] is True
    assert id_token["preferred_username"] == "alice"
    assert "at_hash" in id_token

    with idp.client() as http:
        userinfo = http.get(
            metadata["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        ).json()
    assert userinfo["sub"] == ALICE.sub
    assert userinfo["groups"] == list(ALICE.groups)

    # Alice leaves premium-users: the next refresh says so.
    assert idp.set_groups("alice", ["engineering"])["groups"] == ["engineering"]
    assert idp.user("alice")["groups"] == ["engineering"]
    with idp.client() as http:
        refreshed = http.post(
            metadata["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=(idp.client_id, idp.client_secret),
        )
    assert refreshed.status_code == 200, refreshed.text
    again = refreshed.json()
    assert _claims(again["id_token"])["groups"] == ["engineering"]
    assert _claims(again["id_token"])["sub"] == ALICE.sub
    # Refresh tokens rotate: a new one each time, the used one is spent.
    assert again["refresh_token"] and again["refresh_token"] != tokens["refresh_token"]


def test_a_wrong_password_is_refused_with_the_login_form_again(idp: Idp) -> None:
    metadata = idp.discovery()
    url, *_ = _authorize(idp, metadata)
    with idp.client() as browser:
        response = idp.sign_in(browser, url, ALICE.username, "not-alices-password")
    assert response.status_code == 401
    assert "Invalid username or password." in response.text
    assert 'name="login"' in response.text and 'name="password"' in response.text
    assert ">Sign in</button>" in response.text
    assert "<script" not in response.text
    assert "location" not in response.headers


def test_bob_is_another_person_in_another_group(idp: Idp) -> None:
    tokens = _sign_in(idp, idp.discovery(), BOB.username, BOB.password)
    id_token = _claims(tokens["id_token"])
    assert id_token["sub"] == BOB.sub != ALICE.sub
    assert id_token["groups"] == ["staff"]
    assert id_token["email"] == BOB.email


def test_a_wrong_client_secret_gets_no_tokens(idp: Idp) -> None:
    metadata = idp.discovery()
    with idp.client() as http:
        response = http.post(
            metadata["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": "x"},
            auth=(idp.client_id, "wrong-secret"),
        )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_without_prompt_consent_offline_access_is_dropped_but_a_refresh_token_comes(
    idp: Idp,
) -> None:
    tokens = _sign_in(idp, idp.discovery(), BOB.username, BOB.password)
    assert "offline_access" not in tokens["scope"].split()
    assert tokens["refresh_token"]


def test_prompt_consent_is_granted_without_a_page_and_keeps_offline_access(idp: Idp) -> None:
    tokens = _sign_in(idp, idp.discovery(), BOB.username, BOB.password, prompt="consent")
    assert "offline_access" in tokens["scope"].split()
    assert tokens["refresh_token"]


def test_cancel_on_the_login_page_sends_access_denied_to_the_client(idp: Idp) -> None:
    metadata = idp.discovery()
    url, _, state, _ = _authorize(idp, metadata)
    with idp.client() as browser:
        page = idp.sign_in(browser, url, ALICE.username, "wrong")
        action = page.text.split('action="', 2)[2].split('"', 1)[0]
        assert action.endswith("/abort")
        response = idp.follow(browser, browser.post(f"{idp.issuer}{action}"))
    assert response.status_code in (302, 303)
    params = parse_qs(urlsplit(response.headers["location"]).query)
    assert params["error"] == ["access_denied"]
    assert params["state"] == [state]
