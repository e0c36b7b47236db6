"""Per-subject state: when a person's credentials stop, and which roles they hold now.

Revoking one token is the denylist (`tokens.denylist_key`). Disabling a person, signing
them out everywhere or demoting them must also end the tokens auth cannot enumerate (an
access token without a refresh token belongs to no family), the tokens `keys` exchanged
from their API keys, and the API keys themselves. So auth writes, under the person's
`sub`, a cut-off that every resource server compares with what it is shown:

`subject_key(sub)`: hash, no TTL (it must outlive every credential issued before it, API
keys included; one small hash per person ever signed out, disabled or changed). Written
only by auth, read by auth, keys, tools and audit:
- `tokens_before`: epoch seconds; an access token whose `iat` is at or before it is
  refused, whoever issued it. auth and keys write `iat` in milliseconds (RFC 7519 §2
  allows fractions), so a person who signs in again right after the cut is not refused;
  a whole-second `iat` from another issuer is refused for the rest of the cut's second.
- `keys_before`: epoch seconds; an API key created at or before it is refused.
- `roles`: the person's roles now, space-separated: keys cut a key's permissions to them.
- `disabled`: "1" while the account is disabled.

A subject with no hash (a service client, or a person nothing has happened to since the
hash was introduced) has no cut-off and keeps the roles its credentials carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from redis.asyncio import Redis

from bastion_common.redisacl import Lifetime
from bastion_common.tokens import Principal, denylist_key

__all__ = [
    "KEYS_BEFORE",
    "SUBJECT_LIFETIME",
    "SUBJECT_PATTERN",
    "TOKENS_BEFORE",
    "SubjectState",
    "TokenRefusal",
    "issued_at",
    "principal_refusal",
    "read_subject",
    "subject_key",
    "token_refusal",
]

SUBJECT_PREFIX: Final = "subject:"
SUBJECT_PATTERN: Final = f"{SUBJECT_PREFIX}*"  # Redis ACL: auth writes it, others read
# No TTL: a sign-out cut-off must outlive every token and key issued before it.
SUBJECT_LIFETIME: Final = Lifetime(SUBJECT_PATTERN, "one per user account")
TOKENS_BEFORE: Final = "tokens_before"
KEYS_BEFORE: Final = "keys_before"

TokenRefusal = Literal["token revoked", "subject signed out"]


def subject_key(subject: str) -> str:
    """The per-subject hash (fields above); no TTL."""
    return f"{SUBJECT_PREFIX}{subject}"


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class SubjectState:
    tokens_before: float | None
    keys_before: float | None
    roles: tuple[str, ...] | None
    disabled: bool

    def ends_token(self, issued_at: float) -> bool:
        return self.tokens_before is not None and issued_at <= self.tokens_before

    def ends_key(self, created_at: float) -> bool:
        return self.disabled or (self.keys_before is not None and created_at <= self.keys_before)


async def read_subject(redis: Redis, subject: str) -> SubjectState | None:
    """The subject's state, None when auth never wrote one. Raises when Redis cannot
    answer: the caller must refuse (fail closed)."""
    raw = await redis.hmget(subject_key(subject), [TOKENS_BEFORE, KEYS_BEFORE, "roles", "disabled"])
    tokens, keys, roles, disabled = (_text(v) for v in raw)
    if tokens is None and keys is None and roles is None and disabled is None:
        return None
    return SubjectState(
        tokens_before=float(tokens) if tokens else None,
        keys_before=float(keys) if keys else None,
        roles=tuple(roles.split()) if roles is not None else None,
        disabled=disabled == "1",
    )


def issued_at(principal: Principal) -> float:
    """When the principal's credential was issued (`iat`; `nbf` when it has none)."""
    value = principal.claims.get("iat")
    return float(value) if isinstance(value, int | float) else principal.not_before


async def token_refusal(
    redis: Redis, *, jti: str, subject: str, issued_at: float
) -> TokenRefusal | None:
    """Why an access token must be refused now (its jti denylisted, or its subject cut
    off after it was issued), else None; one round trip. Raises when Redis cannot answer:
    the caller must refuse (fail closed)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(denylist_key(jti))
        pipe.hget(subject_key(subject), TOKENS_BEFORE)
        denied, cut = await pipe.execute()
    if denied:
        return "token revoked"
    cut_text = _text(cut)
    if cut_text and issued_at <= float(cut_text):
        return "subject signed out"
    return None


async def principal_refusal(redis: Redis, principal: Principal) -> TokenRefusal | None:
    """`token_refusal` for a validated access token."""
    return await token_refusal(
        redis, jti=principal.token_id, subject=principal.subject, issued_at=issued_at(principal)
    )
