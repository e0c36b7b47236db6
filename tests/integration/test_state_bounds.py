"""Every key in the running stack is one its owner declared, with the lifetime declared.

Redis runs with `maxmemory` and `noeviction`: a key that outlives its purpose is an
outage on the way. Each key owner declares its keys' lifetimes
(`bastion_common.redisacl.Lifetime`, collected in `deploy/redis_acl.LIFETIMES`): a TTL,
or a stated bound for the few that have none. After a workload of its own (a sign-in
with a refresh token, tool calls, a junk token, a revocation), on top of whatever the
suite did before it, this test lists every key through the test stack's read-only
inspector user and checks each against the declarations.
"""

from __future__ import annotations

import json

import httpx2
import pytest

from deploy.redis_acl import LIFETIMES
from tests.integration.conftest import Stack
from tests.integration.oauth import OAuthClient
from tests.integration.test_attacks import admin, call_weather, tools_uri

pytestmark = pytest.mark.anyio

# In the tools container (it has redis-py and reaches redis): every key and its PTTL.
SCAN = """
import json, os, redis
from urllib.parse import urlsplit
url = urlsplit(os.environ["REDIS_URL"])
r = redis.Redis(host=url.hostname, port=url.port or 6379, username="inspector",
                password=os.environ["INSPECTOR_PASSWORD"])
print(json.dumps([[k.decode("utf-8", "replace"), r.pttl(k)] for k in r.scan_iter(count=1000)]))
"""

# What the workload below writes, whatever ran before: each must be found.
EXPECTED = {
    "auth:client:*", "auth:rt:*", "auth:family:*", "auth:family_jtis:*",
    "auth:user_families:*", "auth:at:*", "auth:user:*", "auth:signing_keys",
    "rl:*", "revoked:jti:*", "subject:*", "audit:events", "keys:signing_key",
}  # fmt: skip


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _keyspace(stack: Stack) -> list[tuple[str, int]]:
    out = stack.run(
        "exec", "-T", "-e", f"INSPECTOR_PASSWORD={stack.env['REDIS_PASSWORD_INSPECTOR']}",
        "tools", "python", "-c", SCAN,
    ).stdout  # fmt: skip
    return [(key, ttl) for key, ttl in json.loads(out.strip().splitlines()[-1])]


async def test_every_key_has_a_ttl_or_a_stated_bound(stack: Stack) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "state-bounds")
    token = await client.token(*admin(stack), resource=tools_uri(stack), scope="weather:read")
    assert await call_weather(stack, token["access_token"]) == 200
    assert await call_weather(stack, "junk.token.value") == 401
    revoked = httpx2.post(
        f"{stack.urls['auth']}/revoke",
        data={"token": token["access_token"], "client_id": client.client_id},
    )
    assert revoked.status_code == 200

    undeclared, overlapping, no_ttl, found = [], [], [], set()
    for key, ttl in _keyspace(stack):
        owners = [lifetime for lifetime in LIFETIMES if lifetime.matches(key)]
        if not owners:
            undeclared.append(key)
            continue
        if len(owners) > 1:
            overlapping.append((key, [o.pattern for o in owners]))
        lifetime = owners[0]
        found.add(lifetime.pattern)
        # -1: no TTL; -2: gone between SCAN and PTTL (it expired: a TTL it had).
        if ttl == -1 and lifetime.bound is None:
            no_ttl.append(key)
    assert undeclared == [], "keys no owner declares (add them to its LIFETIMES)"
    assert overlapping == [], "keys that match more than one declaration"
    assert no_ttl == [], "keys declared to expire that have no TTL"
    assert EXPECTED <= found, f"the workload's keys were not found: {EXPECTED - found}"


def test_the_inspector_reads_no_value_and_writes_nothing(stack: Stack) -> None:
    # The one user the test stack adds must not widen what anyone can do with the data.
    probe = (
        'export REDISCLI_AUTH="$REDIS_PASSWORD_INSPECTOR"; '
        "for c in 'GET auth:signing_keys' 'HGETALL auth:signing_keys' 'SET x 1' "
        "'DEL subject:admin' 'XRANGE audit:events - +'; do "
        "redis-cli --user inspector $c 2>&1 | head -c 60; echo; done"
    )
    answers = stack.exec("redis", "sh", "-c", probe).strip().splitlines()
    assert len(answers) == 5 and all("NOPERM" in a for a in answers), answers
