"""Redis keys of the audit service, and its Redis user (`bastion_common.redisacl`).

- `audit:events` (`bastion_common.audit.AUDIT_STREAM`): only this service may read it,
  acknowledge, claim or trim it; every other service may only append (XADD).
- `audit:dead` stream: entries that could not be stored, with the reason; no TTL (an
  operator reads and clears it), capped at the newest `DEAD_LETTER_MAX` (each one is
  also logged, `audit.dead_letter`, and counted): a publisher that floods the stream
  with junk cannot grow it without bound.
- `audit:anchor` string: the newest signed head of the chain (`anchor.py`), no TTL; only
  this service may write it, so a cut of the database cannot also rewrite it.
"""

from __future__ import annotations

from typing import Final

from bastion_common.audit import AUDIT_STREAM
from bastion_common.redisacl import CONNECTION, TRANSACTIONS, AclUser, Grant, Lifetime
from bastion_common.subjects import SUBJECT_PATTERN
from bastion_common.tokens import DENYLIST_PATTERN

__all__ = [
    "ANCHOR_KEY",
    "DEAD_LETTER_MAX",
    "DEAD_LETTER_STREAM",
    "KEY_PATTERN",
    "LIFETIMES",
    "REDIS_ACL",
]

DEAD_LETTER_STREAM: Final = "audit:dead"
DEAD_LETTER_MAX: Final = 10_000
ANCHOR_KEY: Final = "audit:anchor"
KEY_PATTERN: Final = "audit:*"  # the stream and every key above
# How long each key lives (bastion_common.redisacl.Lifetime): none has a TTL.
LIFETIMES: Final = (
    Lifetime(
        AUDIT_STREAM,
        "trimmed by the collector below its oldest unacknowledged entry; while no collector"
        " runs it grows to maxmemory, then publishers spool to their own disk",
    ),
    Lifetime(DEAD_LETTER_STREAM, f"the newest {DEAD_LETTER_MAX:,} entries"),
    Lifetime(ANCHOR_KEY, "one key"),
)

# audit's Redis user: the whole audit keyspace (the collector's consumer group), and the
# denylist and subject cut-offs read only, to check the tokens presented to its API.
REDIS_ACL: Final = AclUser(
    "audit",
    commands=(
        *CONNECTION, *TRANSACTIONS,
        "xadd", "xreadgroup", "xack", "xautoclaim", "xgroup|create", "xinfo|groups",
        "xpending", "xlen", "xtrim", "xrange",
        "get", "set", "exists", "hget", "hmget",
    ),
    grants=(Grant(KEY_PATTERN), Grant(DENYLIST_PATTERN, "R"), Grant(SUBJECT_PATTERN, "R")),
)  # fmt: skip
