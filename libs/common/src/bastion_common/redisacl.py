"""Redis ACL users (Redis 7 ACL rules), one per service, from what each key owner declares.

A compromised service must not reach another service's state (docs/architecture.md,
"Least privilege in Redis"). So each service connects as its own user, allowed only the
commands it sends and the keys it owns or reads:

- The module that names a service's keys exports that service's `AclUser`
  (`bastion_auth.store.REDIS_ACL`, ...), built from its own key patterns and the
  shared ones each owner exports (the denylist, subject hashes, the audit stream).
- `deploy/redis_acl.py` renders every user into `deploy/redis/users.acl`; a test fails
  when that file differs from what the owners declare, so a new key cannot be forgotten.
- The same owner declares each key's `Lifetime`: a TTL, or the stated bound of a key
  that has none (Redis runs with `maxmemory` and `noeviction`, so unbounded state is an
  outage waiting). The integration suite scans the running stack's keyspace and fails
  on a key nobody declared, or on a key without a TTL that was declared to have one.
- The Redis container adds each user's password from its environment at start
  (`deploy/redis/start.sh`); the file itself holds no secret.

How a rule reads (https://redis.io/docs/latest/operate/oss_and_stack/management/security/acl/):
`~p` read and write keys matching p, `%R~p` read only, `%W~p` write only, `&c` a pub/sub
channel, `+cmd` a command. A `Grant` with `only` commands becomes a selector
`(%W~audit:events +xadd)`: those commands on those keys and nothing else, which is how
a publisher may XADD to the audit stream but never read, delete, ack or trim it.

EVAL and EVALSHA count every key passed in KEYS as read *and* written (Redis cannot know
what the script does), so a script may name a read-only key only in ARGV; the commands
the script runs are still checked against the user's rules one by one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final, Literal

__all__ = [
    "CONNECTION",
    "DEFAULT_USER",
    "HEALTH",
    "SCRIPTS",
    "TRANSACTIONS",
    "AclUser",
    "Grant",
    "Lifetime",
    "render",
]

Access = Literal["R", "W", "RW"]

CONNECTION: Final = ("ping", "info")
"""redis-py's health check and the readiness probe (PING, and INFO for memory pressure:
it shows counters, never a key or a value). redis-py also sends CLIENT SETINFO on
connecting and ignores its refusal; Debian's Redis 7.0 does not know it."""
SCRIPTS: Final = ("eval", "evalsha", "script|load", "script|exists")
TRANSACTIONS: Final = ("multi", "exec", "discard")


@dataclass(frozen=True)
class Grant:
    """Keys matching `pattern` (a Redis glob), read, written or both; with `only`, just
    those commands on them (a selector), whatever else the user may run elsewhere."""

    pattern: str
    access: Access = "RW"
    only: tuple[str, ...] = ()

    def key_rule(self) -> str:
        prefix = {"RW": "~", "R": "%R~", "W": "%W~"}[self.access]
        return f"{prefix}{self.pattern}"

    def selector(self) -> str:
        commands = " ".join(f"+{c}" for c in self.only)
        return f"({self.key_rule()} {commands})"


@dataclass(frozen=True)
class Lifetime:
    """How long keys matching `pattern` (a Redis glob) live: every one has a TTL when
    `bound` is None; otherwise they have none and `bound` says what limits their number."""

    pattern: str
    bound: str | None = None

    def matches(self, key: str) -> bool:
        return fnmatchcase(key, self.pattern)


@dataclass(frozen=True)
class AclUser:
    """One Redis user: its commands, its keys, its pub/sub channels."""

    name: str
    commands: tuple[str, ...]
    grants: tuple[Grant, ...] = ()
    channels: tuple[str, ...] = ()

    def rule(self) -> str:
        """The ACL rule without the password (`start.sh` inserts it after `on`)."""
        parts = ["on", "resetkeys", "resetchannels", "-@all"]
        parts += [f"+{c}" for c in _unique(self.commands)]
        parts += [g.key_rule() for g in self.grants if not g.only]
        parts += [f"&{c}" for c in self.channels]
        parts += [g.selector() for g in self.grants if g.only]
        return " ".join(parts)

    def may(self, key: str, access: Access) -> bool:
        """Whether a key rule of this user (not a selector) covers `key` for `access`."""
        return any(
            not g.only and fnmatchcase(key, g.pattern) and set(access) <= set(g.access)
            for g in self.grants
        )


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


HEALTH: Final = AclUser("health", commands=("ping",))
"""The Redis container's own health check: PING and nothing else."""

DEFAULT_USER: Final = "user default off resetpass ~* &* +@all"
"""Nobody may connect as the default user: it is off and has no password, so no
connection starts authenticated and AUTH as "default" always fails. It keeps every
permission because Redis 7.0 replays the append-only file as this user and re-checks
the ACL at EXEC (redis/redis#14541): with -@all, every MULTI/EXEC a service wrote was
dropped on restart without a word (tests/deploy/test_redis_acl.py)."""


def render(users: Iterable[AclUser]) -> str:
    """The ACL file: the default user off, then one line per user without its password."""
    header = (
        "# Generated by deploy/redis_acl.py from each service's key owner; do not edit.\n"
        "# deploy/redis/start.sh adds each user's password (REDIS_PASSWORD_<USER>) at start.\n"
    )
    lines = [DEFAULT_USER] + [f"user {u.name} {u.rule()}" for u in users]
    return header + "\n".join(lines) + "\n"
