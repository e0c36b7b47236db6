"""Stream entries signed per service (HMAC-SHA256): what the publisher sends verifies,
and every way of lying about who wrote an entry is caught, each with its reason."""

from __future__ import annotations

import secrets

from bastion_common.audit import AuditEvent, batch_fields
from bastion_common.eventsign import ENTRY_SERVICE, ENTRY_SIGNATURE, EntrySigner, check_entry

KEYS = {name: secrets.token_bytes(32) for name in ("auth", "tools")}


def _entry(service: str, *claimed: str) -> dict[str, str]:
    events = [AuditEvent(type="auth.login", service=s).model_dump_json() for s in claimed]
    return EntrySigner(service, KEYS[service]).sign(batch_fields(events))


def test_an_entry_signed_by_the_service_it_names_verifies() -> None:
    fields = _entry("auth", "auth", "auth")
    assert fields[ENTRY_SERVICE] == "auth" and len(fields[ENTRY_SIGNATURE]) == 64
    result = check_entry(fields, KEYS, {"auth"})
    assert result.verified and result.signed_by == "auth" and result.problem is None


def test_tools_signing_events_that_claim_auth_is_refused() -> None:
    result = check_entry(_entry("tools", "auth"), KEYS, {"auth"})
    assert not result.verified
    assert result.problem == "signed by tools but claims to come from auth"


def test_renaming_the_signer_or_changing_the_payload_breaks_the_signature() -> None:
    renamed = {**_entry("tools", "auth"), ENTRY_SERVICE: "auth"}
    assert check_entry(renamed, KEYS, {"auth"}).problem == (
        "signature does not verify under auth's key"
    )
    changed = _entry("auth", "auth")
    changed["event"] = changed["event"].replace("success", "failure")
    assert not check_entry(changed, KEYS, {"auth"}).verified
    # The version and the payload's field name are signed too.
    assert not check_entry({**_entry("auth", "auth"), "v": "2"}, KEYS, {"auth"}).verified


def test_an_unsigned_entry_and_an_unknown_signer_are_refused() -> None:
    bare = batch_fields([AuditEvent(type="auth.login", service="auth").model_dump_json()])
    assert check_entry(bare, KEYS, {"auth"}).problem == "entry is not signed"
    stranger = EntrySigner("billing", secrets.token_bytes(32)).sign(bare)
    assert check_entry(stranger, KEYS, {"auth"}).problem == "no key is known for service 'billing'"
