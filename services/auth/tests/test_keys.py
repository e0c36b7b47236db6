from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from services.auth.tests.helpers import ADMIN, ISSUER, TOOLS, Harness, harness, make_settings

from bastion_common.tokens import TokenError, TokenValidator, TrustedIssuer


def _validator(h: Harness, audience: str) -> TokenValidator:
    """A resource server's validator fetching this app's JWKS over (in-process) HTTP."""
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=h.app), base_url=ISSUER)
    return TokenValidator(
        [TrustedIssuer(ISSUER, jwks_url=f"{ISSUER}/jwks.json")],
        audience,
        http_client=client,
        min_refetch_interval=0,
    )


async def _admin_token(h: Harness) -> str:
    body = await h.tokens(resource=ADMIN)
    return str(body["access_token"])


@pytest.mark.anyio
async def test_key_rotation_fails_no_validation(redis_url: str, tmp_path: Path) -> None:
    async with harness(make_settings(redis_url, tmp_path, key_publish_lead_seconds=0)) as h:
        validator = _validator(h, TOOLS)
        old = (await h.tokens())["access_token"]
        assert (await validator.validate(old)).subject == "admin"
        admin = await _admin_token(h)
        response = await h.client.post(
            "/admin/keys/rotate", headers={"authorization": f"Bearer {admin}"}
        )
        assert response.status_code == 200, response.text
        kid = response.json()["kid"]
        kids = {k["kid"] for k in (await h.client.get("/jwks.json")).json()["keys"]}
        assert kids == {kid, response.json()["previous_kid"]}
        new = (await h.tokens())["access_token"]
        assert (await validator.validate(new)).subject == "admin"
        assert (await validator.validate(old)).subject == "admin"
        events = await h.events("signing_key.rotated")
        assert events[0]["details"]["kid"] == kid
        await validator.aclose()


@pytest.mark.anyio
async def test_a_rotated_key_is_published_before_it_signs(redis_url: str, tmp_path: Path) -> None:
    async with harness(make_settings(redis_url, tmp_path, key_publish_lead_seconds=60)) as h:
        before = await h.ctx.keyring.signer()
        kid, previous = await h.ctx.keyring.rotate()
        assert previous == before.kid
        assert kid in {k["kid"] for k in (await h.ctx.keyring.jwks())["keys"]}
        assert (await h.ctx.keyring.signer()).kid == before.kid


@pytest.mark.anyio
async def test_keys_are_stored_encrypted_and_shared_by_replicas(
    redis_url: str, tmp_path: Path
) -> None:
    async with harness(make_settings(redis_url, tmp_path)) as first:
        token = (await first.tokens())["access_token"]
        raw = await first.redis.hgetall("auth:signing_keys")
        assert raw and all(b"PRIVATE KEY" not in v for v in raw.values())
        async with harness(make_settings(redis_url, tmp_path)) as second:
            assert (await second.client.get("/jwks.json")).json() == (
                await first.client.get("/jwks.json")
            ).json()
            validator = _validator(second, TOOLS)
            assert (await validator.validate(token)).subject == "admin"
            await validator.aclose()


@pytest.mark.anyio
async def test_a_token_for_another_resource_is_refused_by_the_validator(h: Harness) -> None:
    validator = _validator(h, TOOLS)
    token = (await h.tokens(resource="http://localhost:8004"))["access_token"]
    with pytest.raises(TokenError):
        await validator.validate(token)
    await validator.aclose()
