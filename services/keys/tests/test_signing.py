"""The keys service's own signing key: shared by replicas, sealed at rest."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from services.keys.tests.helpers import serve

from bastion_common.redis import create_redis
from bastion_keys.signing import SigningKey, SigningKeyError
from bastion_keys.store import SIGNING_KEY

pytestmark = pytest.mark.anyio


async def test_replicas_share_one_signing_key(make_app: Callable[..., FastAPI]) -> None:
    async with serve(make_app()) as first, serve(make_app()) as second:
        one = (await first.get("/jwks.json")).json()["keys"]
        two = (await second.get("/jwks.json")).json()["keys"]
    assert one == two and len(one) == 1
    assert one[0]["alg"] == "ES256" and one[0]["use"] == "sig" and "d" not in one[0]


async def test_a_wrong_encryption_key_stops_the_service(
    make_app: Callable[..., FastAPI], redis_url: str
) -> None:
    async with serve(make_app()):
        pass
    app = make_app(key_encryption_key=secrets.token_urlsafe(40))
    with pytest.raises(SigningKeyError, match="KEYS_KEY_ENCRYPTION_KEY"):
        async with app.router.lifespan_context(app):
            pass
    redis = create_redis(redis_url)
    assert b"PRIVATE" not in (await redis.get(SIGNING_KEY) or b"PRIVATE")
    await redis.aclose()


def test_a_sealed_key_cannot_be_moved_to_another_kid() -> None:
    kek = secrets.token_urlsafe(40)
    key = SigningKey.generate()
    import json

    doc = json.loads(key.seal(kek))
    doc["kid"] = "other"
    with pytest.raises(SigningKeyError):
        SigningKey.unseal(json.dumps(doc), kek)
    assert SigningKey.unseal(key.seal(kek), kek).kid == key.kid
