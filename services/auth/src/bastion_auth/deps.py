"""What routes need, built once by the lifespan and reached through `Annotated` aliases."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from redis.asyncio import Redis

from bastion_auth.clients import ClientStore
from bastion_auth.federation import Federation
from bastion_auth.idjag import IdJagGrant
from bastion_auth.keys import KeyRing
from bastion_auth.lockout import Lockout
from bastion_auth.settings import Settings
from bastion_auth.tokens import TokenService
from bastion_auth.users import UserStore
from bastion_common.audit import Outcome
from bastion_common.auditor import Auditor
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
    """The caller's address for audit and per-IP limits. X-Forwarded-For is read only when
    the peer is a configured trusted proxy, walking right to left past trusted hops, so a
    client cannot pick its own address (and its own lockout counter)."""
    peer = request.client.host if request.client else "unknown"
    settings: Settings = request.app.state.bastion.settings
    networks = _networks(tuple(settings.trusted_proxies))
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop[:64]
    return peer


@functools.lru_cache(maxsize=8)
def _networks(values: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _trusted(
    address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


Ctx = Annotated[AuthContext, Depends(_context)]
