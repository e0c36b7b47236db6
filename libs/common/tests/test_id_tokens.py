"""ID tokens from an OpenID provider, attacked claim by claim (OIDC Core §3.1.3.7)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bastion_common.idtokens import IdTokenValidator
from bastion_common.tokens import TokenError, TrustedIssuer

ISSUER = "https://idp.example"
CLIENT = "bastion"
NONCE = "n-0S6_WzA2Mj"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks() -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    # No "alg" in the key, as Entra ID publishes them: implied from kty.
    return {"keys": [{**jwk, "kid": "k1", "use": "sig"}]}


def _validator() -> IdTokenValidator:
    async def serve(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=_jwks())

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(serve))
    issuer = TrustedIssuer(ISSUER, jwks_url=f"{ISSUER}/jwks", algorithms=("RS256",))
    return IdTokenValidator(issuer, CLIENT, http_client=http)


def _token(key: Any = RSA_KEY, alg: str = "RS256", kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": CLIENT, "sub": "u-1", "iat": now, "exp": now + 300}
    body["nonce"] = NONCE
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def _at_hash(access: str) -> str:
    digest = hashlib.sha256(access.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


@pytest.mark.anyio
async def test_a_good_id_token_gives_its_claims() -> None:
    claims = await _validator().validate(
        _token(at_hash=_at_hash("at-1"), groups=["g"]), nonce=NONCE, access_token="at-1"
    )
    assert claims["sub"] == "u-1" and claims["groups"] == ["g"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "message"),
    [
        (lambda: _token(nonce="someone-elses"), "nonce"),
        (lambda: _token(nonce=None), "nonce"),
        (lambda: _token(aud="another-client"), "not meant for this client"),
        (lambda: _token(aud=[CLIENT, "other"]), "several audiences"),
        (lambda: _token(aud=[CLIENT, "other"], azp="other"), "azp"),
        (lambda: _token(azp="other"), "azp"),
        (lambda: _token(iss="https://evil.example"), "invalid"),
        (lambda: _token(exp=int(time.time()) - 120), "expired"),
        (lambda: _token(iat=int(time.time()) + 600), "future"),
        (lambda: _token(sub=None), "invalid"),
        (lambda: _token(OTHER_KEY), "invalid"),  # signed by a key not in the JWKS, same kid
        (lambda: _token(kid="k9"), "unknown key"),
        (lambda: _token(at_hash=_at_hash("another-access-token")), "at_hash"),
        (lambda: _token("shared-secret-" * 3, alg="HS256"), "algorithm"),
        (lambda: _token(ec.generate_private_key(ec.SECP256R1()), alg="ES256"), "algorithm"),
        (lambda: "not.a.jwt", "malformed"),
    ],
)
async def test_a_forged_or_misdirected_id_token_is_refused(token: Any, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        await _validator().validate(token(), nonce=NONCE, access_token="at-1")


@pytest.mark.anyio
async def test_an_access_token_is_not_an_id_token() -> None:
    now = int(time.time())
    forged = jwt.encode(
        {"iss": ISSUER, "aud": CLIENT, "sub": "u", "iat": now, "exp": now + 60, "nonce": NONCE},
        RSA_KEY,
        algorithm="RS256",
        headers={"kid": "k1", "typ": "at+jwt"},
    )
    with pytest.raises(TokenError, match="access token"):
        await _validator().validate(forged, nonce=NONCE)


def test_an_id_token_validator_never_takes_a_shared_secret() -> None:
    from pydantic import SecretStr

    issuer = TrustedIssuer(ISSUER, algorithms=("HS256",), shared_secret=SecretStr("x" * 40))
    with pytest.raises(ValueError, match="JWKS only"):
        IdTokenValidator(issuer, CLIENT, http_client=httpx2.AsyncClient())
