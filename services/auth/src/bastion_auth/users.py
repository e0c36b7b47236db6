"""Users: argon2id password hashes (RFC 9106), roles from the policy file, disable/enable.

Hashing and verifying run in a worker thread so a login never blocks the event loop. A
login for an unknown user still verifies against a dummy hash, so its timing does not
reveal whether the username exists.

Every change to a user is one Lua step (`_UPDATE`): concurrent admin calls cannot undo
each other (a role change racing a disable used to write the old `disabled` back). The
same step writes the person's state for the other services (`bastion_common.subjects`):
their roles, whether they are disabled, and the cut-offs that end what they hold: a
disable ends every token and API key; losing a permission ends every token (they carry
the old scopes; API keys are cut to the new roles by `keys` instead).
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
from bastion_common.permissions import RoleTable
from bastion_common.subjects import KEYS_BEFORE, TOKENS_BEFORE, subject_key

__all__ = ["User", "UserError", "UserStore", "validate_password", "validate_username"]

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 256

# KEYS: the user's record, their subject hash. ARGV: roles (JSON list) or "", disabled
# ("1"/"0") or "", password hash or "", now (epoch s), {role: [permissions]} (JSON).
# Returns the record as stored, or false when there is no such user.
_UPDATE = (
    """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local user = cjson.decode(raw)
local table_of = cjson.decode(ARGV[5])
local function permissions(roles)
  local out = {}
  for _, role in ipairs(roles) do
    for _, p in ipairs(table_of[role] or {}) do out[p] = true end
  end
  return out
end
local before = permissions(user['roles'])
if ARGV[1] ~= '' then user['roles'] = cjson.decode(ARGV[1]) end
if ARGV[2] ~= '' then user['disabled'] = ARGV[2] == '1' end
if ARGV[3] ~= '' then user['password_hash'] = ARGV[3] end
user['updated_at'] = tonumber(ARGV[4])
local after = permissions(user['roles'])
local lost = false
for p in pairs(before) do
  if not after[p] then lost = true end
end
local out = cjson.encode(user)
redis.call('SET', KEYS[1], out)
redis.call('HSET', KEYS[2], 'roles', table.concat(user['roles'], ' '),
  'disabled', user['disabled'] and '1' or '0')
local function cut(field)
  local old = tonumber(redis.call('HGET', KEYS[2], field))
  if not old or old < tonumber(ARGV[4]) then redis.call('HSET', KEYS[2], field, ARGV[4]) end
end
if user['disabled'] then
  cut('"""
    + TOKENS_BEFORE
    + """')
  cut('"""
    + KEYS_BEFORE
    + """')
elseif lost then
  cut('"""
    + TOKENS_BEFORE
    + """')
end
return out
"""
)


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


def validate_roles(roles: list[str], table: RoleTable) -> list[str]:
    """`roles`, each one the policy file defines; anything else is refused, naming them."""
    unknown = sorted(set(roles) - set(table.names))
    if unknown or not roles:
        named = f"unknown role {', '.join(repr(r[:32]) for r in unknown[:5])}; " if unknown else ""
        raise UserError(f"roles: {named}one or more of {', '.join(table.names)}")
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
        self._update = redis.register_script(_UPDATE)
        self.roles = settings.roles
        self._role_table = json.dumps(settings.roles.as_json_table())

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
        user = User(
            username.lower(), await self.hash_password(password), validate_roles(roles, self.roles)
        )
        created = await self._redis.set(
            USER.format(username=user.username), json.dumps(asdict(user)), nx=True
        )
        if not created:
            raise UserError("username: already taken")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(USERS, user.username)
            pipe.hset(
                subject_key(user.username), mapping={"roles": " ".join(user.roles), "disabled": "0"}
            )
            await pipe.execute()
        return user

    async def update(
        self,
        username: str,
        *,
        roles: list[str] | None = None,
        disabled: bool | None = None,
        password: str | None = None,
    ) -> User | None:
        """Apply the given changes in one atomic step; None when there is no such user.
        Bad values raise UserError before anything is written."""
        if not _USERNAME.match(username):
            return None
        new_roles = json.dumps(validate_roles(roles, self.roles)) if roles is not None else ""
        new_hash = (
            await self.hash_password(validate_password(password)) if password is not None else ""
        )
        flag = "" if disabled is None else "1" if disabled else "0"
        name = username.lower()
        raw = await self._update(
            keys=[USER.format(username=name), subject_key(name)],
            args=[new_roles, flag, new_hash, repr(time.time()), self._role_table],
        )
        return User(**json.loads(raw)) if raw else None

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
