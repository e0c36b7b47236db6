"""The key management API: create, list, get, rotate, revoke (docs/architecture.md).

Rules enforced here:
- you can only delegate what you hold: a key's permissions must be known permission
  strings held both by the caller's token scopes and by the caller's roles; asking for
  more is `403 insufficient_scope` and an `authz.denied` event;
- the key is in the creation (and rotation) response only, never in a listing; listings
  show metadata, never the key or its HMAC;
- owners manage their own keys; a caller whose token has the admin role *and* the
  `admin:users` scope may list and revoke anyone's keys; anyone else asking about a key
  that is not theirs gets the same 404 as for a key that does not exist.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from bastion_common.errors import ServiceError
from bastion_common.tokens import Principal
from bastion_keys.deps import Caller, Context, KeysContext, client_ip
from bastion_keys.keyformat import KEY_ID, digest, new_key, new_key_id
from bastion_keys.store import KeyRecord

__all__ = ["router"]

MAX_KEY_PERMISSIONS = 256  # a policy file's role holds at most as many

router = APIRouter(prefix="/v1/keys", tags=["keys"])

KeyIdPath = Annotated[str, Path(max_length=32, description="the key id (k_ + 16 hex)")]


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256, description="a label for the owner")
    permissions: list[str] = Field(min_length=1, max_length=MAX_KEY_PERMISSIONS)
    expires_in_days: int | None = Field(
        default=None, ge=1, description="default KEYS_DEFAULT_EXPIRY_DAYS, at most the maximum"
    )


class CreatedKey(BaseModel):
    api_key: str = Field(description="shown this once; only its HMAC is kept")
    key_id: str
    name: str
    permissions: list[str]
    created_at: datetime
    expires_at: datetime


class RotatedKey(BaseModel):
    api_key: str = Field(description="the new key, shown this once")
    key_id: str
    expires_at: datetime
    previous_valid_until: datetime = Field(description="when the replaced key stops working")


class KeyInfo(BaseModel):
    key_id: str
    owner: str
    name: str
    permissions: list[str]
    roles: list[str]
    status: Literal["active", "expired", "revoked"]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    rotated_at: datetime | None
    previous_valid_until: datetime | None
    last_used: datetime | None = Field(description=("stale by up to KEYS_USAGE_FLUSH_SECONDS"))
    use_count: int


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _info(record: KeyRecord, now: float) -> KeyInfo:
    status: Literal["active", "expired", "revoked"] = (
        "revoked" if not record.active else "expired" if now >= record.expires_at else "active"
    )
    overlap = record.prev_until if record.prev_hash and record.prev_until else None
    return KeyInfo(
        key_id=record.key_id,
        owner=record.owner,
        name=record.name,
        permissions=list(record.permissions),
        roles=list(record.roles),
        status=status,
        created_at=_utc(record.created_at),
        expires_at=_utc(record.expires_at),
        revoked_at=_dt(record.revoked_at),
        rotated_at=_dt(record.rotated_at),
        previous_valid_until=_dt(overlap),
        last_used=_dt(record.last_used),
        use_count=record.use_count,
    )


def _is_admin(context: KeysContext, caller: Principal) -> bool:
    return context.settings.admin_role in caller.roles and caller.has("admin:users")


async def _owned(
    context: KeysContext, caller: Principal, key_id: str, ip: str, *, admin_ok: bool, action: str
) -> KeyRecord:
    record = await context.store.get(key_id) if KEY_ID.match(key_id) else None
    if record is None:
        raise ServiceError(404, "not_found", "no such key")
    if record.owner != caller.subject and not (admin_ok and _is_admin(context, caller)):
        await context.auditor.publish(
            "authz.denied", "denied", principal=caller.subject, client_id=caller.client_id,
            ip=ip, key_id=key_id, action=action, reason="not the owner",
        )  # fmt: skip
        raise ServiceError(404, "not_found", "no such key")
    return record


@router.post("", status_code=201, response_model=CreatedKey, summary="Create an API key")
async def create_key(
    body: CreateKeyRequest, caller: Caller, context: Context, request: Request, response: Response
) -> CreatedKey:
    settings = context.settings
    ip = client_ip(request)
    name = body.name.strip()
    if not name or len(name) > settings.name_max_length or not name.isprintable():
        raise ServiceError(
            400,
            "invalid_request",
            f"name must be 1 to {settings.name_max_length} printable characters",
        )
    requested = set(body.permissions)
    unknown = requested - settings.roles.offered  # permissions the policy file offers
    if unknown:
        raise ServiceError(400, "invalid_request", f"unknown permissions: {sorted(unknown)}")
    days = body.expires_in_days or settings.default_expiry_days
    if days > settings.max_expiry_days:
        raise ServiceError(
            400, "invalid_request", f"expires_in_days must be at most {settings.max_expiry_days}"
        )
    # You can only delegate what you hold: the token's scopes and the roles behind them.
    held = caller.scopes & settings.roles.permissions_for(caller.roles)
    beyond = requested - held
    if beyond:
        await context.auditor.publish(
            "authz.denied", "denied", principal=caller.subject, client_id=caller.client_id,
            ip=ip, action="apikey.create", requested=sorted(requested), missing=sorted(beyond),
        )  # fmt: skip
        raise ServiceError(
            403,
            "insufficient_scope",
            f"cannot delegate permissions the caller does not hold: {sorted(beyond)}",
        )
    now = time.time()
    api_key = new_key()
    record = KeyRecord(
        key_id=new_key_id(),
        owner=caller.subject,
        name=name,
        permissions=tuple(sorted(requested)),
        roles=tuple(sorted(caller.roles)),
        created_at=now,
        expires_at=now + days * 86400,
        active=True,
        hash=digest(settings.hmac_secret.get_secret_value().encode(), api_key),
    )
    result = await context.store.create(record, max_per_owner=settings.max_keys_per_owner)
    if not result.created:
        if result.at_cap:
            raise ServiceError(
                409, "limit_reached", f"at most {settings.max_keys_per_owner} keys per owner"
            )
        raise ServiceError(503, "temporarily_unavailable", "try again")  # 64-bit id collision
    await context.auditor.publish(
        "apikey.created", principal=caller.subject, client_id=caller.client_id, ip=ip,
        key_id=record.key_id, permissions=list(record.permissions), expires_in_days=days,
    )  # fmt: skip
    response.headers["Cache-Control"] = "no-store"
    return CreatedKey(
        api_key=api_key,
        key_id=record.key_id,
        name=record.name,
        permissions=list(record.permissions),
        created_at=_utc(record.created_at),
        expires_at=_utc(record.expires_at),
    )


@router.get("", response_model=list[KeyInfo], summary="List keys (own, or an owner's: admin)")
async def list_keys(
    caller: Caller,
    context: Context,
    request: Request,
    owner: Annotated[str | None, Query(max_length=256)] = None,
) -> list[KeyInfo]:
    target = owner or caller.subject
    if target != caller.subject and not _is_admin(context, caller):
        await context.auditor.publish(
            "authz.denied", "denied", principal=caller.subject, client_id=caller.client_id,
            ip=client_ip(request), action="apikey.list", owner=target,
        )  # fmt: skip
        raise ServiceError(403, "access_denied", "only admins may list another owner's keys")
    now = time.time()
    return [_info(r, now) for r in await context.store.list_owner(target)]


@router.get("/{key_id}", response_model=KeyInfo, summary="One key's metadata")
async def get_key(key_id: KeyIdPath, caller: Caller, context: Context, request: Request) -> KeyInfo:
    record = await _owned(
        context, caller, key_id, client_ip(request), admin_ok=True, action="apikey.get"
    )
    return _info(record, time.time())


@router.post("/{key_id}/rotate", response_model=RotatedKey, summary="Rotate a key's secret")
async def rotate_key(
    key_id: KeyIdPath, caller: Caller, context: Context, request: Request, response: Response
) -> RotatedKey:
    ip = client_ip(request)
    record = await _owned(context, caller, key_id, ip, admin_ok=False, action="apikey.rotate")
    settings = context.settings
    api_key = new_key()
    new_hash = digest(settings.hmac_secret.get_secret_value().encode(), api_key)
    now = time.time()
    previous_until = await context.store.rotate(
        key_id, new_hash, now=now, overlap_seconds=settings.rotation_overlap_seconds
    )
    if previous_until is None:
        raise ServiceError(409, "invalid_request", "only an active key can be rotated")
    if settings.rotation_overlap_seconds == 0:
        # The old secret died now: tell caches at once, as for a revocation.
        await context.store.announce_revoked(key_id)
    await context.auditor.publish(
        "apikey.rotated", principal=caller.subject, client_id=caller.client_id, ip=ip,
        key_id=key_id, overlap_seconds=settings.rotation_overlap_seconds,
    )  # fmt: skip
    response.headers["Cache-Control"] = "no-store"
    return RotatedKey(
        api_key=api_key,
        key_id=key_id,
        expires_at=_utc(record.expires_at),
        previous_valid_until=_utc(previous_until),
    )


@router.delete("/{key_id}", status_code=204, summary="Revoke a key (idempotent)")
async def revoke_key(key_id: KeyIdPath, caller: Caller, context: Context, request: Request) -> None:
    ip = client_ip(request)
    record = await _owned(context, caller, key_id, ip, admin_ok=True, action="apikey.revoke")
    if await context.store.revoke(key_id, now=time.time()):
        await context.auditor.publish(
            "apikey.revoked", principal=caller.subject, client_id=caller.client_id, ip=ip,
            key_id=key_id, owner=record.owner,
        )  # fmt: skip
