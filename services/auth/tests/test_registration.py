from __future__ import annotations

from typing import Any

import pytest
from services.auth.tests.helpers import REDIRECT, Harness

GOOD: dict[str, Any] = {
    "client_name": "c",
    "application_type": "native",
    "redirect_uris": [REDIRECT],
    "token_endpoint_auth_method": "none",
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"application_type": "desktop"}, "invalid_client_metadata"),
        ({"redirect_uris": ["file:///etc/passwd"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["myapp:/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["com.example.app:cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://ok.example;x/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://ok.example'/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["data:text/html,hi"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://ok.example/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://user:pw@ok.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://ok.example/" + "a" * 3000]}, "invalid_redirect_uri"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "invalid_client_metadata"),
        ({"grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({"response_types": ["token"]}, "invalid_client_metadata"),
        ({"client_name": "x" * 500}, "invalid_client_metadata"),
    ],
)
async def test_bad_client_metadata_is_refused(
    h: Harness, change: dict[str, Any], error: str
) -> None:
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = await h.client.post("/register", json=body)
    assert response.status_code == 400 and response.json()["error"] == error
    events = await h.events("client.registered")
    assert events[0]["outcome"] == "failure"


@pytest.mark.anyio
async def test_oversized_or_non_json_registration_is_refused(h: Harness) -> None:
    big = await h.client.post("/register", content=b"{" + b" " * 20000 + b"}")
    assert big.status_code == 400 and big.json()["error"] == "invalid_client_metadata"
    junk = await h.client.post("/register", content=b"not json")
    assert junk.status_code == 400


@pytest.mark.anyio
async def test_good_registration_returns_a_public_client(h: Harness) -> None:
    response = await h.client.post(
        "/register", json={**GOOD, "redirect_uris": [REDIRECT, "https://app.example/cb"]}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["token_endpoint_auth_method"] == "none" and "client_secret" not in body
    events = await h.events("client.registered")
    assert events[0]["client_id"] == body["client_id"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("uris", "expected"),
    [
        ([REDIRECT, "http://localhost:33333/cb", "http://[::1]:4000/cb"], "native"),
        (["com.example.app:/oauth/callback"], "native"),
        (["https://app.example/cb"], "web"),
        ([REDIRECT, "https://app.example/cb"], "web"),
    ],
)
async def test_application_type_is_inferred_when_left_out(
    h: Harness, uris: list[str], expected: str
) -> None:
    """RFC 7591 makes application_type optional (OIDC Registration defaults it to web):
    an MCP client that leaves it out registers, typed by where its redirects go."""
    body = {k: v for k, v in GOOD.items() if k != "application_type"}
    response = await h.client.post("/register", json={**body, "redirect_uris": uris})
    assert response.status_code == 201, response.text
    assert response.json()["application_type"] == expected
