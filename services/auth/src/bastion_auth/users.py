"""Users: argon2id password hashes (RFC 9106), roles from DESIGN.md, disable/enable.

Hashing and verifying run in a worker thread so a login never blocks the event loop. A
login for an unknown user still verifies against a dummy hash, so its timing does not
reveal whether the username exists.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from redis.asyncio import Redis

from bastion_auth.settings import Settings
from bastion_auth.store import USER, USERS
from bastion_common.permissions import ROLES

__all__ = ["User", "UserError", "UserStore", "validate_password", "validate_username"]

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 256


class UserError(ValueError):
    """A user request that cannot be applied (message is safe to show)."""


@dataclass
class User:
    username: str
    password_hash: str
    roles: list[str]
    disabled: bool = False
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "roles": self.roles,
            "disabled": self.disabled,
            "created_at": int(self.created_at),
        }


def validate_username(username: str) -> str:
    if not _USERNAME.match(username):
        raise UserError(
            "username: 1-64 letters, digits or . _ @ -, starting with a letter or digit"
        )
    return username


def validate_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def validate_roles(roles: list[str]) -> list[str]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise UserError(f"roles: one or more of {', '.join(ROLES)}")
    return sorted(set(roles))


class UserStore:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        self._dummy_hash: str | None = None

    async def hash_password(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self.hasher.hash, password)

    async def get(self, username: str) -> User | None:
        if not _USERNAME.match(username):
            return None
        raw = await self._redis.get(USER.format(username=username.lower()))
        return User(**json.loads(raw)) if raw else None

    async def count(self) -> int:
        return int(await self._redis.scard(USERS))

    async def all(self) -> list[User]:
        names = sorted(
            n.decode() if isinstance(n, bytes) else n for n in await self._redis.smembers(USERS)
        )
        raws = await self._redis.mget([USER.format(username=n) for n in names]) if names else []
        return [User(**json.loads(r)) for r in raws if r]

    async def create(self, username: str, password: str, roles: list[str]) -> User:
        validate_username(username)
        validate_password(password)
        user = User(username.lower(), await self.hash_password(password), validate_roles(roles))
        created = await self._redis.set(
            USER.format(username=user.username), json.dumps(asdict(user)), nx=True
        )
        if not created:
            raise UserError("username: already taken")
        await self._redis.sadd(USERS, user.username)
        return user

    async def update(
        self,
        username: str,
        *,
        roles: list[str] | None = None,
        disabled: bool | None = None,
        password: str | None = None,
    ) -> User | None:
        user = await self.get(username)
        if user is None:
            return None
        if roles is not None:
            user.roles = validate_roles(roles)
        if disabled is not None:
            user.disabled = disabled
        if password is not None:
            user.password_hash = await self.hash_password(validate_password(password))
        user.updated_at = time.time()
        await self._redis.set(USER.format(username=user.username), json.dumps(asdict(user)))
        return user

    async def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password is right and the account enabled; else None, after
        the same argon2 work whether or not the user exists."""
        user = await self.get(username)
        if user is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash_password("not-a-real-password-at-all")
            await self._verify(self._dummy_hash, password)
            return None
        if not await self._verify(user.password_hash, password) or user.disabled:
            return None
        return user

    async def _verify(self, stored: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self.hasher.verify(stored, password[:MAX_PASSWORD])
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await anyio.to_thread.run_sync(check)
