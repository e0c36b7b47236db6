"""Who becomes what: the people an identity provider vouches for, as our users.

One rule for every source (an OpenID provider, GitHub, an enterprise IdP's ID-JAG
assertions): a person is linked by (issuer, subject), never by email or login alone;
the user is created at the first sign-in (just in time) with a random password nobody
knows, so the password form stays closed to it; its roles are recomputed from the
source's claims every time it vouches for the person; a disabled user stays disabled
whatever the source says (an administrator's word wins). docs/sign-in.md.

The source's long-lived credential (an OIDC refresh token, a GitHub access token) is
kept sealed in the link, so that our refresh can ask the source again.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bastion_auth.crypto import Sealer
from bastion_auth.settings import RoleMapping
from bastion_auth.store import FED_LINK, FED_USER, digest
from bastion_auth.users import UserError, UserStore

__all__ = ["FederatedIdentity", "FederationError", "Link", "Linker", "roles_for"]

_NAME_CHARS = re.compile(r"[^a-z0-9._-]+")


class FederationError(Exception):
    """A sign-in through a provider that cannot go on; `message` is for the person,
    `reason` for the audit record, `unavailable` when the provider could not be reached."""

    def __init__(self, message: str, reason: str, *, unavailable: bool = False) -> None:
        super().__init__(reason)
        self.message = message
        self.reason = reason
        self.unavailable = unavailable


@dataclass(frozen=True)
class FederatedIdentity:
    username: str
    roles: list[str]
    provider: str


@dataclass(frozen=True)
class Link:
    """A user's link to the provider that vouches for it."""

    provider: str
    subject: str
    credential: str | None  # opened: the provider's refresh or access token


def roles_for(mapping: RoleMapping, claims: dict[str, Any]) -> list[str] | None:
    """Our roles for these claims, or None when the allowlist keeps the person out."""
    groups = claims.get(mapping.groups_claim)
    group_set = {str(g) for g in groups} if isinstance(groups, list) else set()
    if mapping.allowed_email_domains or mapping.allowed_groups:
        email = claims.get("email")
        domain_ok = (
            isinstance(email, str)
            and claims.get("email_verified") is True
            and email.rsplit("@", 1)[-1].lower() in mapping.allowed_email_domains
        )
        if not domain_ok and not group_set & set(mapping.allowed_groups):
            return None
    roles = set(mapping.default_roles)
    for rule in mapping.role_rules:
        value = claims.get(rule.claim)
        held = {str(v) for v in value} if isinstance(value, list) else {str(value)}
        if rule.value in held:
            roles.add(rule.role)
    return sorted(roles)


class Linker:
    def __init__(self, redis: Redis, users: UserStore, key_encryption_key: str) -> None:
        self._redis = redis
        self._users = users
        self._sealer = Sealer(key_encryption_key, "idp-refresh")

    async def link_of(self, username: str) -> Link | None:
        """The provider link of `username`, or None for a local user. Raises
        FederationError when the link is broken (then nothing is vouched for)."""
        link_key = await self._redis.get(FED_USER.format(username=username))
        if link_key is None:
            return None
        raw = await self._redis.get(link_key)
        if raw is None:
            raise FederationError("Sign in again.", "provider link is gone")
        link = json.loads(raw)
        sealed = link.get("refresh")
        credential = self._sealer.open(base64.b64decode(sealed)).decode() if sealed else None
        return Link(link["provider"], link["sub"], credential)

    async def link(
        self,
        mapping: RoleMapping,
        issuer: str,
        claims: dict[str, Any],
        credential: object = None,
    ) -> FederatedIdentity:
        """Our user for the person `issuer` vouches for with `claims`, with its roles
        applied; raises FederationError when the mapping or an admin keeps them out."""
        roles = roles_for(mapping, claims)
        if roles is None:
            raise FederationError(
                f"Your {mapping.name} account is not allowed to use this server. "
                "Ask your administrator for access.",
                "not allowed by the provider's allowlist",
            )
        sub = str(claims["sub"])
        link_key = FED_LINK.format(provider=mapping.id, subject=digest(f"{issuer}|{sub}"))
        raw = await self._redis.get(link_key)
        link: dict[str, Any] = json.loads(raw) if raw else {}
        username = link.get("username") or await self._create_user(mapping, claims, roles)
        user = await self._users.get(username)
        if user is None:
            raise FederationError("Sign in again.", "linked user is gone")
        if user.disabled:  # an administrator's word wins over the provider's
            raise FederationError(
                "This account is disabled. Ask your administrator.", "account disabled"
            )
        if sorted(user.roles) != roles:
            await self._users.update(username, roles=roles)
        sealed = (
            base64.b64encode(self._sealer.seal(credential.encode())).decode()
            if isinstance(credential, str) and credential
            else link.get("refresh")
        )
        record = {"username": username, "provider": mapping.id, "sub": sub, "refresh": sealed}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(link_key, json.dumps(record))
            pipe.set(FED_USER.format(username=username), link_key)
            await pipe.execute()
        return FederatedIdentity(username, roles, mapping.id)

    async def _create_user(
        self, mapping: RoleMapping, claims: dict[str, Any], roles: list[str]
    ) -> str:
        hint = claims.get(mapping.username_claim) or claims.get("email") or ""
        base = _NAME_CHARS.sub("-", str(hint).split("@", 1)[0].lower()).strip("-._")[:40]
        tag = digest(str(claims["sub"]))
        base = base or tag[:12]
        # A random password nobody knows keeps the password form closed to this account.
        for name in (f"{base}@{mapping.id}", f"{base}-{tag[:6]}@{mapping.id}"):
            try:
                await self._users.create(name, secrets.token_urlsafe(32), roles)
                return name
            except UserError:
                continue
        raise FederationError("Sign in again.", "no free username for this person")
