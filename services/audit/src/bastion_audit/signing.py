"""The Ed25519 key that signs checkpoints, derived from AUDIT_CHECKPOINT_KEY.

HKDF-SHA256 (RFC 5869) turns the configured secret into the 32-byte Ed25519 seed
(RFC 8032 §5.1.5), so the key never sits in the store next to what it protects and every
replica holding the secret derives the same key. A checkpoint signs the canonical JSON
of its sequence number, head hash and time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["CheckpointSigner", "checkpoint_message"]

_INFO = b"bastion-audit checkpoint signing key v1"


def checkpoint_message(seq: int, head_hash: str, time: str) -> bytes:
    return json.dumps(
        {"seq": seq, "hash": head_hash, "time": time}, sort_keys=True, separators=(",", ":")
    ).encode()


@dataclass(frozen=True)
class CheckpointSigner:
    private: Ed25519PrivateKey

    @classmethod
    def from_secret(cls, secret: str) -> CheckpointSigner:
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            secret.encode()
        )
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()[:16]

    def sign(self, seq: int, head_hash: str, time: str) -> str:
        return self.private.sign(checkpoint_message(seq, head_hash, time)).hex()

    def verify(self, seq: int, head_hash: str, time: str, signature: str) -> bool:
        try:
            self.public.verify(bytes.fromhex(signature), checkpoint_message(seq, head_hash, time))
        except (InvalidSignature, ValueError):
            return False
        return True
