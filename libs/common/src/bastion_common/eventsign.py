"""Audit stream entries authenticated by the service that wrote them (HMAC-SHA256,
RFC 2104), so one service cannot publish events in another's name.

Every service may append to `audit:events` (its Redis user may XADD there and nothing
more), so the stream alone cannot tell who wrote an entry. Each publisher therefore
holds a key of its own (`BASTION_EVENT_KEY`, generated per service by deploy/gen-env.sh)
and tags each entry it XADDs with:

- `svc`: the service that signed it;
- `sig`: hex HMAC-SHA256 under that service's key of the domain tag, `svc`, the schema
  version `v`, the payload field's name (`event` or `events`) and its value.

The collector holds every service's key (`AUDIT_EVENT_KEYS`). `check_entry` answers
whether an entry was signed by the service it names, and every event in it claims that
same service; an entry that fails is stored flagged, never dropped (bastion_audit).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ENTRY_SERVICE", "ENTRY_SIGNATURE", "EntrySigner", "Provenance", "check_entry"]

ENTRY_SERVICE = "svc"
ENTRY_SIGNATURE = "sig"
_TAG = b"bastion-audit-entry/1"
_PAYLOADS = ("event", "events")


def _mac(key: bytes, service: str, fields: Mapping[str, str]) -> str:
    name = next((n for n in _PAYLOADS if n in fields), "")
    parts = [_TAG, service.encode(), fields.get("v", "").encode(), name.encode()]
    message = b"\n".join(parts) + b"\n" + fields.get(name, "").encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class EntrySigner:
    """Signs the stream entries of one service (`AuditPublisher` calls it per XADD)."""

    service: str
    key: bytes

    def sign(self, fields: dict[str, str]) -> dict[str, str]:
        return {
            **fields,
            ENTRY_SERVICE: self.service,
            ENTRY_SIGNATURE: _mac(self.key, self.service, fields),
        }


@dataclass(frozen=True)
class Provenance:
    """Who signed an entry, and whether that holds (`problem` says why not)."""

    verified: bool
    signed_by: str | None = None
    problem: str | None = None


def check_entry(
    fields: Mapping[str, str], keys: Mapping[str, bytes], claimed: set[str]
) -> Provenance:
    """Whether the entry's signature holds under the key of the service it names, and
    every event in it (`claimed`: their `service` fields) says it came from that one."""
    service = fields.get(ENTRY_SERVICE)
    signature = fields.get(ENTRY_SIGNATURE)
    if not service or not signature:
        return Provenance(False, None, "entry is not signed")
    key = keys.get(service)
    if key is None:
        return Provenance(False, service, f"no key is known for service {service!r}")
    if not hmac.compare_digest(_mac(key, service, fields), signature):
        return Provenance(False, service, f"signature does not verify under {service}'s key")
    others = sorted(claimed - {service})
    if others:
        return Provenance(
            False, service, f"signed by {service} but claims to come from {others[0]}"
        )
    return Provenance(True, service)
