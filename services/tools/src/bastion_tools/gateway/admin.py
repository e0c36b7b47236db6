"""The gateway's admin API on `tools`: upstream states, held definitions with the
difference from their pin, and approval (docs/gateway.md, "Pinning").

A bearer token for this MCP resource (an access token, never an API key) holding
`admin:users`, not revoked, of a person whose stored roles (per-subject state written
by auth) still include `admin`. Approval names the exact definition by its SHA-256, as
the held list shows it: a definition that changed again since is not approved.
"""

from __future__ import annotations

import difflib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from bastion_common.contracts import API_KEY_PREFIX
from bastion_common.subjects import principal_refusal, read_subject
from bastion_common.tokens import Principal, TokenError
from bastion_tools.gateway.pins import Held
from bastion_tools.gateway.registry import Gateway
from bastion_tools.guard.authn import Authenticator, CredentialUnavailable

__all__ = ["ADMIN_PERMISSION", "admin_router", "describe"]

ADMIN_PERMISSION = "admin:users"


class Approval(BaseModel):
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")


def describe(held: Held) -> dict[str, Any]:
    """A held definition as an admin reviews it: what it replaces and the difference."""
    new = json.loads(held.definition)
    old = json.loads(held.pinned) if held.pinned is not None else None
    diff = difflib.unified_diff(
        _pretty(old).splitlines(), _pretty(new).splitlines(), "pinned", "upstream now", lineterm=""
    )
    return {
        "upstream": held.upstream,
        "tool": held.tool,
        "digest": held.digest,
        "kind": "new" if old is None else "changed",
        "diff": "\n".join(diff),
        "definition": new,
    }


def _pretty(definition: Any) -> str:
    return "" if definition is None else json.dumps(definition, indent=2, sort_keys=True)


async def admin(request: Request) -> Principal:
    """The signed-in admin making this request; every refusal is recorded."""
    state = request.app.state.bastion
    gateway: Gateway | None = state.extra.get("gateway")
    ip = request.client.host if request.client else None
    principal: Principal | None = None

    def refuse(status: int, reason: str) -> HTTPException:
        if gateway is not None:
            gateway.record.admin_refused(principal, ip, reason)
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else None
        return HTTPException(status, reason, headers)

    authenticator: Authenticator | None = state.extra.get("authenticator")
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip() or authenticator is None:
        raise refuse(401, "a bearer token is required")
    if credential.strip().startswith(API_KEY_PREFIX):
        raise refuse(401, "an admin signs in; API keys are not accepted")
    try:
        principal = await authenticator.authenticate(credential.strip())
        refusal = await principal_refusal(state.redis, principal)
        subject = await read_subject(state.redis, principal.subject)
    except TokenError as exc:
        raise refuse(401, str(exc)) from None
    except (CredentialUnavailable, RedisError, OSError):
        raise HTTPException(503, "credentials cannot be checked now") from None
    if refusal is not None:
        raise refuse(401, refusal)
    roles = subject.roles if subject is not None and subject.roles is not None else principal.roles
    if (
        ADMIN_PERMISSION not in principal.scopes
        or "admin" not in roles
        or (subject is not None and subject.disabled)
    ):
        raise refuse(403, f"needs a signed-in admin holding {ADMIN_PERMISSION}")
    return principal


Admin = Annotated[Principal, Depends(admin)]


def admin_router() -> APIRouter:
    router = APIRouter(prefix="/admin/gateway", include_in_schema=False)

    def gateway_of(request: Request) -> Gateway:
        gateway: Gateway | None = request.app.state.bastion.extra.get("gateway")
        if gateway is None:
            raise HTTPException(503, "service is starting")
        return gateway

    @router.get("/upstreams")
    async def upstreams(request: Request, _: Admin) -> dict[str, Any]:
        return {"upstreams": gateway_of(request).status()}

    @router.get("/held")
    async def held(request: Request, _: Admin) -> dict[str, Any]:
        gateway = gateway_of(request)
        out = []
        for name in gateway.links:
            out += [describe(item) for item in await gateway.pins.held(name)]
        return {"held": out}

    @router.post("/held/{upstream}/{tool}/approve")
    async def approve(
        request: Request, upstream: str, tool: str, body: Approval, principal: Admin
    ) -> dict[str, Any]:
        gateway = gateway_of(request)
        if upstream not in gateway.links:
            raise HTTPException(404, "no such upstream")
        approved = await gateway.approve(upstream, tool, body.digest, principal.subject)
        if approved is None:
            raise HTTPException(409, "no held definition of this tool has that digest")
        await gateway.relist(upstream)
        return {"approved": {"upstream": upstream, "tool": tool, "digest": approved.digest}}

    return router
