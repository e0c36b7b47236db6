"""Checking a presented API key: the one path shared by the exchange and introspection.

Order matters:
1. length, then format (`keyformat.check_format`): junk never reaches Redis;
2. one Redis round trip returns the IP's failure count and the record the key's HMAC
   points at; an IP over its failure budget is refused before the record is looked at
   (fixed window, `failed_presentations_per_ip` per `failed_presentation_window_seconds`);
3. the HMAC is compared with the record's current (or, during a rotation overlap,
   previous) HMAC in constant time (`hmac.compare_digest`);
4. active, not expired, previous secret still inside its overlap;
5. the owner as auth says they are now (`bastion_common.subjects`): a disabled owner, or
   one signed out everywhere after the key was made, ends the key; the key's permissions
   and roles are cut to the owner's current roles (a demotion cuts what keys can do).
   Redis not answering raises, and the caller refuses (fail closed).
Every refusal counts against the IP and is an `apikey.presentation_failed` event with the
reason and the key id when one is known, never the key.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

from bastion_common.subjects import read_subject
from bastion_keys.deps import KeysContext
from bastion_keys.keyformat import check_format, digest, digests_equal
from bastion_keys.store import KeyRecord

__all__ = ["Accepted", "PresentationRefused", "RateLimited", "present"]

Reason = Literal[
    "too_long",
    "malformed",
    "unknown",
    "revoked",
    "expired",
    "rotated",
    "owner_disabled",
    "owner_signed_out",
]


@dataclass  # not frozen: see bastion_common.errors.ServiceError
class PresentationRefused(Exception):
    reason: Reason
    key_id: str | None = None


@dataclass  # not frozen: see bastion_common.errors.ServiceError
class RateLimited(Exception):
    retry_after: int


@dataclass(frozen=True)
class Accepted:
    record: KeyRecord
    valid_until: float
    """When this secret stops working: the key's expiry, or the end of its overlap."""


def _judge(presented_hmac: str, record: KeyRecord | None, now: float) -> Accepted | Reason:
    if record is None:
        return "unknown"
    if digests_equal(presented_hmac, record.hash):
        valid_until = record.expires_at
    elif record.prev_hash and digests_equal(presented_hmac, record.prev_hash):
        if record.prev_until is None or now >= record.prev_until:
            return "rotated"
        valid_until = min(record.prev_until, record.expires_at)
    else:
        return "unknown"
    if not record.active:
        return "revoked"
    if now >= record.expires_at:
        return "expired"
    return Accepted(record, valid_until)


async def _as_owner_is_now(context: KeysContext, accepted: Accepted) -> Accepted | Reason:
    record = accepted.record
    state = await read_subject(context.store.redis, record.owner)
    if state is None:  # not a person auth manages (a service), or never changed
        return accepted
    if state.disabled:
        return "owner_disabled"
    if state.ends_key(record.created_at):
        return "owner_signed_out"
    if state.roles is None:
        return accepted
    allowed = context.settings.roles.permissions_for(state.roles)
    cut = dataclasses.replace(
        record,
        permissions=tuple(p for p in record.permissions if p in allowed),
        roles=state.roles,
    )
    return Accepted(cut, accepted.valid_until)


async def present(
    context: KeysContext, presented: str, ip: str, *, via: str, limit: bool = True
) -> Accepted:
    """The key's record, or PresentationRefused / RateLimited (both already audited).

    `limit=False` skips the per-IP failure budget: for a caller whose `ip` is a service
    fronting many clients, one budget for all of them would let anyone lock all out.
    """
    settings = context.settings
    now = time.time()
    problem = check_format(presented)
    if problem is None:
        hmac_hex = digest(settings.hmac_secret.get_secret_value().encode(), presented)
        fails, record = await context.store.lookup(hmac_hex, ip)
    else:
        hmac_hex = ""
        fails, record = await context.store.failures(ip), None
    verdict: Accepted | Reason = problem or _judge(hmac_hex, record, now)
    if isinstance(verdict, Accepted):
        verdict = await _as_owner_is_now(context, verdict)
    if isinstance(verdict, Accepted):
        # Judged before the address budget: a valid key from an address shared with
        # someone presenting junk (a NAT, a proxy) is not locked out with them. The
        # lookup was made either way, so this costs nothing more.
        context.usage.record(verdict.record.key_id)
        return verdict
    if limit and fails >= settings.failed_presentations_per_ip:
        context.auditor.emit(
            "ratelimit.refused", "denied", ip=ip, limit="apikey_failed_presentations", via=via
        )
        raise RateLimited(settings.failed_presentation_window_seconds)
    if limit:
        await context.store.count_failure(ip, settings.failed_presentation_window_seconds)
    key_id = record.key_id if record is not None else None
    context.auditor.emit(
        "apikey.presentation_failed", "failure",
        principal=record.owner if record else None,
        client_id=f"apikey:{key_id}" if key_id else None,
        ip=ip, key_id=key_id, reason=verdict, via=via,
    )  # fmt: skip
    raise PresentationRefused(verdict, key_id)
