"""Signing keys (RFC 7517 JWKS, RFC 9068 signing) shared by every replica through Redis.

Private keys are stored encrypted (`crypto.Sealer`). Rotation is one call: the new key is
published at once but signs only after `key_publish_lead_seconds`, so resource servers
that cache the JWKS see it before any token carries its `kid`; the old key stays
published until every token it signed has expired (`retire_at`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from redis.asyncio import Redis

from bastion_auth.crypto import Sealer
from bastion_auth.settings import Settings
from bastion_auth.store import SIGNING_INIT_LOCK, SIGNING_KEYS

__all__ = ["KeyRing", "SigningKey"]

_CACHE_SECONDS = 2.0
_RETIRE_MARGIN = 60  # seconds past the last token's exp (validators' leeway)


@dataclass
class SigningKey:
    kid: str
    private_pem: str
    created_at: float
    not_before: float
    retire_at: float | None = None

    def public_jwk(self) -> dict[str, Any]:
        private = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)  # noqa: S101 - we wrote it
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES256"})
        return jwk


def _new_key(not_before: float) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    now = time.time()
    return SigningKey(uuid.uuid4().hex, pem, now, not_before)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class KeyRing:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._sealer = Sealer(settings.key_encryption_key.get_secret_value(), "signing-keys")
        self._cache: list[SigningKey] = []
        self._loaded_at = 0.0
        self._jwk_cache: dict[str, dict[str, Any]] = {}
        self._private: dict[str, ec.EllipticCurvePrivateKey] = {}

    async def ensure_initial(self) -> None:
        """Create the first key once across replicas (the first to take the lock)."""
        with anyio.fail_after(30):
            while not await self._redis.hlen(SIGNING_KEYS):
                if await self._redis.set(SIGNING_INIT_LOCK, "1", nx=True, ex=30):
                    await self._store(_new_key(time.time()))
                    return
                await anyio.sleep(0.1)

    async def _store(self, key: SigningKey) -> None:
        sealed = self._sealer.seal(json.dumps(asdict(key)).encode())
        await self._redis.hset(SIGNING_KEYS, key.kid, sealed)
        self._loaded_at = 0.0

    async def keys(self) -> list[SigningKey]:
        now = time.monotonic()
        if now - self._loaded_at < _CACHE_SECONDS and self._cache:
            return self._cache
        raw = await self._redis.hgetall(SIGNING_KEYS)
        keys = [SigningKey(**json.loads(self._sealer.open(_bytes(blob)))) for blob in raw.values()]
        keys.sort(key=lambda k: k.not_before)
        self._cache, self._loaded_at = keys, now
        return keys

    async def signer(self) -> SigningKey:
        now = time.time()
        usable = [
            k
            for k in await self.keys()
            if k.not_before <= now and (k.retire_at is None or k.retire_at > now)
        ]
        if not usable:
            raise RuntimeError("no signing key is available")
        return usable[-1]

    async def jwks(self) -> dict[str, Any]:
        now = time.time()
        out = []
        for key in await self.keys():
            if key.retire_at is not None and key.retire_at <= now:
                continue
            jwk = self._jwk_cache.get(key.kid)
            if jwk is None:
                jwk = self._jwk_cache[key.kid] = key.public_jwk()
            out.append(jwk)
        return {"keys": out}

    async def sign(self, claims: dict[str, Any]) -> str:
        """An RFC 9068 access token: header typ at+jwt, alg ES256, kid."""
        key = await self.signer()
        private = self._private.get(key.kid)
        if private is None:
            # Parsing a PEM costs more than signing: keep the key object per kid.
            loaded = serialization.load_pem_private_key(key.private_pem.encode(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise RuntimeError("stored signing key is not an EC key")
            private = self._private[key.kid] = loaded
        return jwt.encode(
            claims, private, algorithm="ES256", headers={"typ": "at+jwt", "kid": key.kid}
        )

    async def rotate(self) -> tuple[str, str | None]:
        """Publish a new key now, sign with it after the lead time; retire the old one
        once its last token has expired. Returns (new kid, previous kid)."""
        self._loaded_at = 0.0
        now = time.time()
        new = _new_key(now + self._settings.key_publish_lead_seconds)
        previous: SigningKey | None = None
        for key in await self.keys():
            if key.retire_at is None:
                key.retire_at = new.not_before + self._settings.access_token_ttl + _RETIRE_MARGIN
                previous = key
                await self._store(key)
            elif key.retire_at < now - 86400:
                await self._redis.hdel(SIGNING_KEYS, key.kid)
        await self._store(new)
        return new.kid, previous.kid if previous else None
