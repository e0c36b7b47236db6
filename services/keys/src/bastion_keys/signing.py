"""The keys service's own ES256 signing key: shared by replicas, encrypted at rest.

The first replica to start generates the key and stores it with SET NX; the others read
that one, so every replica signs with the same key and one JWKS describes them all. The
private key is kept as PKCS#8 sealed with AES-256-GCM under a key derived (HKDF-SHA256)
from KEYS_KEY_ENCRYPTION_KEY, with the kid as associated data, so a Redis dump does not
give the key away and a blob cannot be moved to another kid. A wrong encryption key
stops the service at start-up rather than letting it mint with a new key silently.

Tokens are RFC 9068 access tokens (`typ: at+jwt`); the kid is the RFC 7638 thumbprint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt.algorithms import ECAlgorithm
from redis.asyncio import Redis

from bastion_keys.store import SIGNING_KEY

__all__ = ["SigningKey", "SigningKeyError", "load_or_create_signing_key"]

_HKDF_INFO = b"bastion-keys signing key v1"


class SigningKeyError(Exception):
    """The stored signing key cannot be used (wrong encryption key or damaged)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aead(kek: str) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        kek.encode()
    )
    return AESGCM(derived)


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        private = ec.generate_private_key(ec.SECP256R1())
        return cls(kid=_thumbprint(private.public_key()), private=private)

    def public_jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "alg": "ES256", "use": "sig"}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims, self.private, algorithm="ES256", headers={"typ": "at+jwt", "kid": self.kid}
        )

    def access_token(
        self,
        *,
        issuer: str,
        subject: str,
        audience: str,
        client_id: str,
        scope: str,
        roles: list[str],
        lifetime: int,
    ) -> tuple[str, str, int]:
        """(token, jti, exp) for an RFC 9068 access token."""
        issued = time.time()
        now = int(issued)
        jti = uuid.uuid4().hex
        exp = now + lifetime
        # iat in milliseconds, as auth does: see `bastion_common.subjects`.
        iat = math.floor(issued * 1000) / 1000
        claims = {
            "iss": issuer, "sub": subject, "aud": audience, "iat": iat, "nbf": now,
            "exp": exp, "jti": jti, "client_id": client_id, "scope": scope, "roles": roles,
        }  # fmt: skip
        return self.sign(claims), jti, exp

    def seal(self, kek: str) -> str:
        pkcs8 = self.private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(12)
        sealed = _aead(kek).encrypt(nonce, pkcs8, self.kid.encode())
        return json.dumps({"v": 1, "kid": self.kid, "nonce": _b64(nonce), "ct": _b64(sealed)})

    @classmethod
    def unseal(cls, blob: str, kek: str) -> SigningKey:
        try:
            doc = json.loads(blob)
            kid = str(doc["kid"])
            pkcs8 = _aead(kek).decrypt(_unb64(doc["nonce"]), _unb64(doc["ct"]), kid.encode())
            private = serialization.load_der_private_key(pkcs8, password=None)
        except (InvalidTag, KeyError, ValueError, TypeError) as exc:
            raise SigningKeyError(
                "stored signing key cannot be decrypted: KEYS_KEY_ENCRYPTION_KEY differs "
                "from the one it was sealed with"
            ) from exc
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise SigningKeyError("stored signing key is not an EC key")
        return cls(kid=kid, private=private)


def _thumbprint(public: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 §3: SHA-256 over the required members in lexicographic order."""
    jwk = json.loads(ECAlgorithm.to_jwk(public))
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]},
        separators=(",", ":"),
        sort_keys=True,
    )
    return _b64(hashlib.sha256(canonical.encode()).digest())


async def load_or_create_signing_key(redis: Redis, kek: str) -> SigningKey:
    """The shared signing key; the first replica to get here creates it."""
    stored = await redis.get(SIGNING_KEY)
    if stored is None:
        candidate = SigningKey.generate()
        if await redis.set(SIGNING_KEY, candidate.seal(kek), nx=True):
            return candidate
        stored = await redis.get(SIGNING_KEY)
        if stored is None:
            raise SigningKeyError("signing key vanished while being created")
    return SigningKey.unseal(stored.decode() if isinstance(stored, bytes) else stored, kek)
