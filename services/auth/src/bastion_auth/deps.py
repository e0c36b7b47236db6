"""What routes need, built once by the lifespan and reached through `Annotated` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from redis.asyncio import Redis

from bastion_auth.clients import ClientStore
from bastion_auth.federation import Federation
from bastion_auth.idjag import IdJagGrant
from bastion_auth.keys import KeyRing
from bastion_auth.lockout import Lockout
from bastion_auth.quota import AddressQuota
from bastion_auth.settings import Settings
from bastion_auth.tokens import TokenService
from bastion_auth.users import UserStore
from bastion_common.audit import Outcome
from bastion_common.auditor import Auditor
from bastion_common.clientip import client_ip as common_client_ip
from bastion_common.tokens import TokenValidator

__all__ = ["AuthContext", "Ctx", "client_ip"]


@dataclass
class AuthContext:
    settings: Settings
    redis: Redis
    audit: Auditor
    keyring: KeyRing
    tokens: TokenService
    users: UserStore
    clients: ClientStore
    lockout: Lockout
    admin_validator: TokenValidator
    federation: Federation
    idjag: IdJagGrant
    register_quota: AddressQuota
    authorize_quota: AddressQuota

    def event(
        self,
        type_: str,
        outcome: Outcome = "success",
        *,
        principal: str | None = None,
        client_id: str | None = None,
        ip: str | None = None,
        **details: Any,
    ) -> None:
        """Record an audit event (`Auditor.emit`: never waits)."""
        self.audit.emit(type_, outcome, principal=principal, client_id=client_id, ip=ip, **details)


def _context(request: Request) -> AuthContext:
    ctx: AuthContext = request.app.state.bastion.extra["auth"]
    return ctx


def client_ip(request: Request) -> str:
    """The caller's address for audit and per-IP limits (`bastion_common.clientip`)."""
    settings: Settings = request.app.state.bastion.settings
    peer = request.client.host if request.client else None
    return common_client_ip(peer, request.headers.get("x-forwarded-for"), settings.trusted_proxies)


Ctx = Annotated[AuthContext, Depends(_context)]
