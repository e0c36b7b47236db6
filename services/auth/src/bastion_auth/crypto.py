"""Encryption at rest for what the service must store but not in clear (signing keys,
the token pair kept for the refresh grace window): AES-256-GCM under a key derived with
HKDF-SHA256 from AUTH_KEY_ENCRYPTION_KEY, one derived key per purpose."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["Sealer"]


class Sealer:
    def __init__(self, secret: str, purpose: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=f"bastion-auth:{purpose}".encode()
        ).derive(secret.encode())
        self._aead = AESGCM(key)
        self._aad = purpose.encode()

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, self._aad)

    def open(self, sealed: bytes) -> bytes:
        """Raises cryptography's InvalidTag when the data or the key is wrong."""
        return self._aead.decrypt(sealed[:12], sealed[12:], self._aad)
