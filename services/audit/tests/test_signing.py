"""The checkpoint key: derived from the configured secret, signatures bind every field."""

from __future__ import annotations

import secrets

from bastion_audit.signing import CheckpointSigner


def test_the_same_secret_derives_the_same_key_on_every_replica() -> None:
    secret = secrets.token_urlsafe(40)
    one, two = CheckpointSigner.from_secret(secret), CheckpointSigner.from_secret(secret)
    assert one.key_id == two.key_id
    assert two.verify(5, "ab" * 32, "t", one.sign(5, "ab" * 32, "t"))


def test_a_signature_does_not_survive_a_change_of_seq_hash_time_or_key() -> None:
    signer = CheckpointSigner.from_secret(secrets.token_urlsafe(40))
    signature = signer.sign(5, "ab" * 32, "2026-01-01T00:00:00+00:00")
    assert not signer.verify(6, "ab" * 32, "2026-01-01T00:00:00+00:00", signature)
    assert not signer.verify(5, "cd" * 32, "2026-01-01T00:00:00+00:00", signature)
    assert not signer.verify(5, "ab" * 32, "2026-01-02T00:00:00+00:00", signature)
    other = CheckpointSigner.from_secret(secrets.token_urlsafe(40))
    assert not other.verify(5, "ab" * 32, "2026-01-01T00:00:00+00:00", signature)
    assert not signer.verify(5, "ab" * 32, "2026-01-01T00:00:00+00:00", "not hex")
