"""Enterprise-managed authorization: the jwt-bearer grant with ID-JAG assertions (RFC 7523,
draft-ietf-oauth-identity-assertion-authz-grant), attacked claim by claim. The enterprise
IdP is a stand-in that signs with a test key and serves its JWKS over real HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from services.auth.tests.helpers import ISSUER, TOOLS, Harness, harness, make_settings

from tests.integration.standins import EnterpriseIdp

pytestmark = pytest.mark.anyio
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT = "acme-agent"
SECRET_ENV = "AUTH_IDJAG_UNIT_SECRET"
SECRET = "acme-agent-" + "Zp4Lq8Wx2Rt6Yb9Nc3Vd7Hk"
IDP_ISSUER = "https://idp.acme.example"
ALICE = "00u1alice"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def idp() -> Iterator[EnterpriseIdp]:
    server = EnterpriseIdp(IDP_ISSUER)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def h(
    redis_url: str, tmp_path: Path, idp: EnterpriseIdp, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    settings = make_settings(
        redis_url,
        tmp_path,
        oidc_allow_http=True,
        idjag_issuers=[
            {
                "id": "acme",
                "name": "Acme IdP",
                "issuer": IDP_ISSUER,
                "jwks_url": idp.jwks_url,
                "role_rules": [{"claim": "groups", "value": "premium-users", "role": "premium"}],
            }
        ],
        idjag_clients=[{"client_id": CLIENT, "client_secret_env": SECRET_ENV}],
    )
    async with harness(settings) as value:
        yield value


def _assertion(idp: EnterpriseIdp, **claims: Any) -> str:
    values: dict[str, Any] = {
        "audience": ISSUER,
        "client_id": CLIENT,
        "subject": ALICE,
        "resource": TOOLS,
        "preferred_username": "alice",
        "groups": ["premium-users"],
        "scope": "weather:read weather:write files:delete",
    }
    values.update(claims)
    return idp.assertion(**values)


async def _grant(
    h: Harness, assertion: str, *, secret: str = SECRET, **extra: str
) -> httpx2.Response:
    return await h.client.post(
        "/token",
        data={"grant_type": JWT_BEARER, "assertion": assertion, **extra},
        auth=(CLIENT, secret),
    )


async def test_an_assertion_from_the_enterprise_idp_gives_an_audience_bound_token(
    h: Harness, idp: EnterpriseIdp
) -> None:
    response = await _grant(h, _assertion(idp))
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refresh_token" not in body and body["token_type"] == "Bearer"
    record = await h.ctx.tokens.access_record(body["access_token"])
    assert record is not None
    assert record["sub"] == "alice@acme" and record["aud"] == TOOLS
    assert record["client_id"] == CLIENT and record["roles"] == ["premium", "user"]
    # The assertion's scopes, cut to what the premium role holds (files:delete is not).
    assert body["scope"] == "weather:read weather:write"
    (issued,) = await h.events("token.issued")
    assert issued["details"]["grant_type"] == JWT_BEARER
    assert issued["details"]["idp"] == IDP_ISSUER
    metadata = (await h.client.get("/.well-known/oauth-authorization-server")).json()
    assert JWT_BEARER in metadata["grant_types_supported"]


def _other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


REFUSALS: list[tuple[str, Callable[[EnterpriseIdp], str], str]] = [
    ("wrong aud", lambda idp: _assertion(idp, audience="https://as.other"), "not meant for"),
    ("aud list", lambda idp: _assertion(idp, aud=[ISSUER, "https://x.example"]), "not meant for"),
    ("unknown issuer", lambda idp: _assertion(idp, iss="https://evil.example"), "trusted"),
    ("resource not ours", lambda idp: _assertion(idp, resource="https://api.other.example"),
     "not served here"),
    ("no resource", lambda idp: _assertion(idp, resource=None), "names no resource"),
    ("client mismatch", lambda idp: _assertion(idp, client_id="another-agent"), "another client"),
    ("expired", lambda idp: _assertion(idp, iat=int(time.time()) - 400,
                                       exp=int(time.time()) - 100), "expired"),
    ("too long", lambda idp: _assertion(idp, exp=int(time.time()) + 86400), "too long"),
    ("issued later", lambda idp: _assertion(idp, iat=int(time.time()) + 600,
                                            exp=int(time.time()) + 700), "future"),
    ("id token typ", lambda idp: _assertion(idp, typ="JWT"), "typ"),
    ("access token typ", lambda idp: _assertion(idp, typ="at+jwt"), "typ"),
    ("bad signature", lambda idp: _assertion(idp, key=_other_key()), "signature"),
    ("no jti", lambda idp: _assertion(idp, jti=None), "invalid"),
    ("garbage", lambda idp: "not.a.jwt", "malformed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in REFUSALS], ids=[n for n, _, _ in REFUSALS]
)
async def test_a_bad_assertion_is_refused_with_invalid_grant_and_recorded(
    h: Harness, idp: EnterpriseIdp, make: Callable[[EnterpriseIdp], str], reason: str
) -> None:
    response = await _grant(h, make(idp))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_grant" and reason in body["error_description"]
    assert "access_token" not in body
    (failed,) = await h.events("oauth.request_failed")
    assert failed["outcome"] == "failure" and failed["client_id"] == CLIENT
    assert failed["details"]["grant_type"] == JWT_BEARER
    assert failed["details"]["error"] == "invalid_grant"
    assert not await h.ctx.users.get("alice@acme")  # nothing linked, nothing created


async def test_an_assertion_is_good_once(h: Harness, idp: EnterpriseIdp) -> None:
    assertion = _assertion(idp)
    assert (await _grant(h, assertion)).status_code == 200
    replay = await _grant(h, assertion)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert "already used" in replay.json()["error_description"]
    (failed,) = await h.events("oauth.request_failed")
    assert failed["details"]["reason"] == "assertion was already used"


async def test_a_forged_assertion_does_not_burn_the_real_one(
    h: Harness, idp: EnterpriseIdp
) -> None:
    real = _assertion(idp, jti="jti-shared")
    forged = _assertion(idp, jti="jti-shared", key=_other_key())
    assert (await _grant(h, forged)).status_code == 400
    assert (await _grant(h, real)).status_code == 200


async def test_only_the_configured_confidential_client_may_present_assertions(
    h: Harness, idp: EnterpriseIdp
) -> None:
    wrong_secret = await _grant(h, _assertion(idp), secret="not-the-secret")
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    public = await h.register()
    response = await h.client.post(
        "/token",
        data={
            "grant_type": JWT_BEARER,
            "client_id": public,
            "assertion": _assertion(idp, client_id=public),
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "unauthorized_client"


async def test_a_resource_parameter_must_be_one_the_assertion_names(
    h: Harness, idp: EnterpriseIdp
) -> None:
    other = await _grant(h, _assertion(idp), resource="http://localhost:8004")
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"
    wider = await _grant(h, _assertion(idp, scope="weather:read"), scope="weather:write")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"


async def test_a_disabled_person_gets_nothing_whatever_the_idp_says(
    h: Harness, idp: EnterpriseIdp
) -> None:
    assert (await _grant(h, _assertion(idp))).status_code == 200
    await h.ctx.users.update("alice@acme", disabled=True)
    refused = await _grant(h, _assertion(idp))
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert refused.json()["error_description"] == "account disabled"


async def test_roles_follow_the_claims_of_each_assertion(h: Harness, idp: EnterpriseIdp) -> None:
    assert (await _grant(h, _assertion(idp))).status_code == 200
    demoted = await _grant(h, _assertion(idp, groups=["staff"]))
    assert demoted.status_code == 200
    record = await h.ctx.tokens.access_record(demoted.json()["access_token"])
    assert record is not None and record["roles"] == ["user"]
    assert demoted.json()["scope"] == "weather:read"


async def test_an_issuer_sharing_a_providers_id_and_issuer_reaches_the_same_account(
    redis_url: str, tmp_path: Path, idp: EnterpriseIdp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linked by (issuer, sub): the person who signed in through the OpenID provider
    `acme` is the one an `acme` ID-JAG speaks for, whatever name the assertion suggests."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv("AUTH_ACME_OIDC_SECRET", "oidc-secret-for-acme")
    trusted = {"id": "acme", "name": "Acme", "issuer": IDP_ISSUER, "jwks_url": idp.jwks_url}
    provider = {
        "id": "acme", "name": "Acme", "issuer": IDP_ISSUER, "client_id": "bastion",
        "client_secret_env": "AUTH_ACME_OIDC_SECRET",
    }  # fmt: skip
    settings = make_settings(
        redis_url, tmp_path, oidc_allow_http=True, oidc_providers=[provider],
        idjag_issuers=[trusted],
        idjag_clients=[{"client_id": CLIENT, "client_secret_env": SECRET_ENV}],
    )  # fmt: skip
    async with harness(settings) as h:
        config = h.ctx.settings.oidc_providers[0]
        signed_in = await h.ctx.federation.linker.link(
            config, IDP_ISSUER, {"sub": ALICE, "preferred_username": "alice"}
        )
        response = await _grant(h, _assertion(idp, preferred_username="someone-else"))
        assert response.status_code == 200, response.text
        record = await h.ctx.tokens.access_record(response.json()["access_token"])
        assert record is not None and record["sub"] == signed_in.username == "alice@acme"
        assert await h.ctx.users.get("someone-else@acme") is None
        # Another subject of the same issuer is another person.
        other = await _grant(h, _assertion(idp, subject="00u2bob", preferred_username="alice"))
        other_record = await h.ctx.tokens.access_record(other.json()["access_token"])
        assert other_record is not None and other_record["sub"] != "alice@acme"
