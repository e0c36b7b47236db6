"""`POST /v1/introspect`: the tools server's check of a key presented to it directly.

Not RFC 7662 (that would take a token, not a key, and a form body): a JSON contract
shared with `tools` (`bastion_common.contracts.KeyIntrospection`). The caller is a
service: its access token from auth for this resource must carry a `client_id` in
KEYS_INTROSPECTION_CLIENTS, anything else is 403 and an `authz.denied` event. The answer
is `{"active": false}` for every refusal, whatever the reason (the reason goes to the
audit event), so the endpoint does not tell which keys exist. `created_at` lets tools
refuse the key, in its one Redis round trip, once its owner is signed out or disabled
after it was made. `expires_at` is when this
secret stops working (the end of a rotation overlap when the old secret is presented),
so a cache honouring it stops in time.

A caller may pass the presenting client's address as `client_ip` (optional, additive to
the contract); failed presentations are then rate limited per that address, as on
`/token`. Without it they are audited but not limited here: the caller's own address
fronts all its clients, and one budget for all would let one attacker lock every key
user out of tools (tools limits failed attempts per client IP itself).
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from bastion_common.contracts import KeyIntrospection
from bastion_common.errors import ServiceError
from bastion_keys.deps import Caller, Context, client_ip
from bastion_keys.presentation import PresentationRefused, RateLimited, present

__all__ = ["router"]

router = APIRouter(tags=["introspection"])


class IntrospectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(max_length=4096)
    client_ip: str | None = Field(default=None, max_length=64)


IntrospectResponse = KeyIntrospection  # the contract's one owner: bastion_common.contracts


@router.post(
    "/v1/introspect",
    response_model=IntrospectResponse,
    response_model_exclude_none=True,
    summary="Check an API key for a service (tools)",
)
async def introspect(
    body: IntrospectRequest, caller: Caller, context: Context, request: Request
) -> IntrospectResponse:
    ip = client_ip(request)
    if caller.client_id not in context.settings.introspection_clients:
        context.auditor.emit(
            "authz.denied", "denied", principal=caller.subject, client_id=caller.client_id,
            ip=ip, action="apikey.introspect", reason="client not allowed to introspect",
        )  # fmt: skip
        raise ServiceError(403, "access_denied", "this client may not introspect API keys")
    try:
        accepted = await present(
            context,
            body.api_key,
            body.client_ip or ip,
            via="introspect",
            limit=body.client_ip is not None,
        )
    except RateLimited as exc:
        raise ServiceError(429, "rate_limited", "too many failed key presentations; retry later",
                        {"Retry-After": str(exc.retry_after)}) from None  # fmt: skip
    except PresentationRefused:
        return IntrospectResponse(active=False)
    record = accepted.record
    return IntrospectResponse(
        active=True,
        key_id=record.key_id,
        owner=record.owner,
        roles=list(record.roles),
        permissions=list(record.permissions),
        expires_at=datetime.fromtimestamp(accepted.valid_until, UTC),
        created_at=datetime.fromtimestamp(record.created_at, UTC),
    )
