"""Every Redis key the auth service uses, with its lifetime beside it.

Replicas share all state through these keys; nothing security-relevant lives only in
one process. Secrets (codes, refresh tokens, client secrets) are keyed by their SHA-256,
never stored in clear.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from bastion_common.audit import PUBLISH_GRANT
from bastion_common.redisacl import CONNECTION, SCRIPTS, TRANSACTIONS, AclUser, Grant, Lifetime
from bastion_common.subjects import SUBJECT_PATTERN
from bastion_common.tokens import DENYLIST_PATTERN

__all__ = [
    "ACCESS_RECORD",
    "AUTH_REQUEST",
    "BOOTSTRAP_LOCK",
    "AUTH_REQUEST_TTL",
    "CIMD_CACHE",
    "CLIENT",
    "CODE",
    "CODE_USED",
    "CODE_USED_TTL",
    "FAMILY",
    "FED_LINK",
    "FED_STATE",
    "FED_STATE_TTL",
    "FED_USER",
    "IDJAG_JTI",
    "FAMILY_JTIS",
    "LOCK_ACCOUNT_FAILS",
    "LOCK_ACCOUNT_UNTIL",
    "KEY_PATTERN",
    "LIFETIMES",
    "LOCK_IP_FAILS",
    "REFRESH",
    "QUOTA",
    "REDIS_ACL",
    "REFRESH_NEXT",
    "SESSION",
    "SESSION_TTL",
    "SIGNING_INIT_LOCK",
    "SIGNING_KEYS",
    "USER",
    "USERS",
    "USER_FAMILIES",
    "digest",
]


def digest(secret: str) -> str:
    """The key under which a high-entropy secret is stored (never the secret itself)."""
    return hashlib.sha256(secret.encode()).hexdigest()


USER = "auth:user:{username}"  # JSON, no TTL
USERS = "auth:users"  # set of usernames, no TTL
CLIENT = "auth:client:{client_id}"  # JSON; DCR: dcr_client_ttl, refreshed on use; else no TTL
CIMD_CACHE = "auth:cimd:{digest}"  # JSON of a fetched metadata document, cimd_cache_seconds

# Sign-in through an identity provider: the state of one round trip to it (keyed by the
# state's SHA-256), the link of (provider, SHA-256 of issuer|sub) to our user with the
# provider's refresh token sealed, and the way back from a username to its link.
FED_STATE = "auth:fed:state:{state}"  # JSON, FED_STATE_TTL
FED_STATE_TTL = 600
FED_LINK = "auth:fed:link:{provider}:{subject}"  # JSON, no TTL
FED_USER = "auth:fed:user:{username}"  # the FED_LINK key, no TTL
# A used ID-JAG assertion (SHA-256 of issuer|jti), until it expires plus the leeway.
IDJAG_JTI = "auth:idjag:jti:{digest}"  # "1", exp - now + leeway

AUTH_REQUEST = "auth:authreq:{id}"  # a validated /authorize request waiting for login
AUTH_REQUEST_TTL = 600
SESSION = "auth:session:{id}"  # browser session: JSON {username, request_id}, one request
SESSION_TTL = 3600

CODE = "auth:code:{digest}"  # authorization code, settings.code_ttl (60 s)
CODE_USED = "auth:code_used:{digest}"  # family id issued from a redeemed code
CODE_USED_TTL = 3600

REFRESH = "auth:rt:{digest}"  # refresh token record, refresh_token_ttl
REFRESH_NEXT = "auth:rt_next:{digest}"  # encrypted pair issued on rotation, grace window
FAMILY = "auth:family:{id}"  # hash: sub, client_id, revoked; refresh_token_ttl
FAMILY_JTIS = "auth:family_jtis:{id}"  # hash jti -> exp of access tokens of the family
USER_FAMILIES = "auth:user_families:{sub}"  # set of family ids ("sign out everywhere")

ACCESS_RECORD = "auth:at:{digest}"  # claims of an issued access token, until its exp

SIGNING_KEYS = "auth:signing_keys"  # hash kid -> encrypted key record, no TTL
SIGNING_INIT_LOCK = "auth:signing_init"  # first replica creates the first key, 30 s
BOOTSTRAP_LOCK = "auth:bootstrap"  # first replica creates the bootstrap admin, 60 s

LOCK_ACCOUNT_FAILS = "auth:lock:acct_fails:{username}"  # failures in lockout_window
LOCK_ACCOUNT_UNTIL = "auth:lock:acct_until:{username}"  # locked until its TTL ends
LOCK_IP_FAILS = "auth:lock:ip_fails:{ip}"  # failures per client IP in lockout_window

QUOTA = "auth:quota:{name}:{ip}"  # requests of one kind from one address, its window (quota.py)

KEY_PATTERN: Final = "auth:*"  # every key above; tests check each name against it

_ONE_PER_USER = "one per user account (created by an admin, or linked at first sign-in)"


def _glob(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "*", template)


# How long each key above lives (bastion_common.redisacl.Lifetime): a TTL unless a bound
# is stated. tests/integration/test_state_bounds.py checks the running stack against it.
LIFETIMES: Final = (
    Lifetime(_glob(USER), _ONE_PER_USER),
    Lifetime(USERS, _ONE_PER_USER),
    Lifetime(
        _glob(CLIENT),
        "clients from settings or the admin; DCR clients expire after dcr_client_ttl unused"
        " and /register is limited per address (quota.py)",
    ),
    *(Lifetime(_glob(k)) for k in (CIMD_CACHE, FED_STATE, IDJAG_JTI, AUTH_REQUEST, SESSION)),
    Lifetime(_glob(FED_LINK), "one per linked account of a user"),
    Lifetime(_glob(FED_USER), _ONE_PER_USER),
    *(Lifetime(_glob(k)) for k in (CODE, CODE_USED, REFRESH, REFRESH_NEXT, FAMILY)),
    *(Lifetime(_glob(k)) for k in (FAMILY_JTIS, USER_FAMILIES, ACCESS_RECORD)),
    Lifetime(
        SIGNING_KEYS,
        "one hash, a field per key rotation (an admin action); retired keys stay, unpublished",
    ),
    Lifetime(SIGNING_INIT_LOCK),
    Lifetime(BOOTSTRAP_LOCK),
    *(Lifetime(_glob(k)) for k in (LOCK_ACCOUNT_FAILS, LOCK_ACCOUNT_UNTIL, LOCK_IP_FAILS)),
    Lifetime(_glob(QUOTA)),
)

# auth's Redis user (bastion_common.redisacl): its own keys, the denylist and the subject
# cut-offs it writes, and the audit stream, append only.
REDIS_ACL: Final = AclUser(
    "auth",
    commands=(
        *CONNECTION, *SCRIPTS, *TRANSACTIONS,
        "get", "set", "getdel", "mget", "del", "exists", "expire", "incr", "decr",
        "ttl", "hget", "hmget", "hgetall", "hlen", "hset", "hdel", "sadd", "smembers", "scard",
    ),
    grants=(Grant(KEY_PATTERN), Grant(DENYLIST_PATTERN), Grant(SUBJECT_PATTERN), PUBLISH_GRANT),
)  # fmt: skip
