"""Write deploy/redis/users.acl from each service's key owner (bastion_common.redisacl).

    python deploy/redis_acl.py          # rewrite the file
    python deploy/redis_acl.py --check  # exit 1 when the file differs from the owners

The file holds no password: deploy/redis/start.sh adds them at container start.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bastion_audit import redis_keys as audit
from bastion_audit.redis_keys import REDIS_ACL as AUDIT
from bastion_auth import store as auth
from bastion_auth.store import REDIS_ACL as AUTH
from bastion_common.redisacl import HEALTH, AclUser, Lifetime, render
from bastion_common.subjects import SUBJECT_LIFETIME
from bastion_common.tokens import DENYLIST_LIFETIME
from bastion_keys import store as keys
from bastion_keys.store import REDIS_ACL as KEYS
from bastion_tools import store as tools
from bastion_tools.store import REDIS_ACL as TOOLS

ACL_FILE = Path(__file__).resolve().parent / "redis" / "users.acl"
USERS: tuple[AclUser, ...] = (AUTH, KEYS, TOOLS, AUDIT, HEALTH)
# Every key any service writes, with its lifetime (tests/integration/test_state_bounds.py).
LIFETIMES: tuple[Lifetime, ...] = (
    *auth.LIFETIMES, *keys.LIFETIMES, *tools.LIFETIMES, *audit.LIFETIMES,
    DENYLIST_LIFETIME, SUBJECT_LIFETIME,
)  # fmt: skip


def main(argv: list[str]) -> int:
    text = render(USERS)
    if "--check" in argv:
        if not ACL_FILE.exists() or ACL_FILE.read_text() != text:
            sys.stderr.write(f"{ACL_FILE} is stale: run python deploy/redis_acl.py\n")
            return 1
        return 0
    ACL_FILE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
