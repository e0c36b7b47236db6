"""Discovery: RFC 8414 metadata names this issuer, its token endpoint and its JWKS."""

from __future__ import annotations

import httpx2
import pytest
from services.keys.tests.helpers import KEYS_URL

pytestmark = pytest.mark.anyio


async def test_metadata_announces_the_issuer_and_its_keys(keys: httpx2.AsyncClient) -> None:
    meta = (await keys.get("/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == KEYS_URL
    assert meta["token_endpoint"] == f"{KEYS_URL}/token"
    assert meta["jwks_uri"] == f"{KEYS_URL}/jwks.json"
    assert meta["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    assert (await keys.get("/jwks.json")).json()["keys"][0]["kty"] == "EC"


async def test_the_api_is_documented(keys: httpx2.AsyncClient) -> None:
    spec = (await keys.get("/openapi.json")).json()
    paths = ["/v1/keys", "/v1/keys/{key_id}", "/v1/keys/{key_id}/rotate", "/token"]
    paths += ["/v1/introspect", "/jwks.json", "/.well-known/oauth-authorization-server"]
    for path in paths:
        assert path in spec["paths"], path
    token_body = spec["paths"]["/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in token_body
