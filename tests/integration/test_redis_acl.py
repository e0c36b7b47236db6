"""Redis ACLs in the running stack: each service, with the credentials it was given,
tries what an attacker who took it over would try. Every attempt is refused (NOPERM)
and changes nothing."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

# Run inside a service's container with its own REDIS_URL: each command's outcome.
ATTEMPT = """
import json, os, sys, redis
r = redis.Redis.from_url(os.environ["REDIS_URL"])
out = []
for command in json.loads(sys.argv[1]):
    try:
        r.execute_command(*command)
        out.append("ok")
    except redis.exceptions.NoPermissionError:
        out.append("NOPERM")
    except redis.exceptions.ResponseError as exc:
        out.append("NOPERM" if "can't run" in str(exc) else "error: " + str(exc)[:80])
print(json.dumps(out))
"""

FORBIDDEN: dict[str, list[list[str]]] = {
    "tools": [
        ["GET", "auth:user:admin"],
        ["SET", "auth:session:it-forged", "{}"],
        ["XDEL", "audit:events", "1-1"],
        ["XREADGROUP", "GROUP", "audit-collectors", "it", "STREAMS", "audit:events", ">"],
        ["XACK", "audit:events", "audit-collectors", "1-1"],
        ["DEL", "revoked:jti:it-probe"],
        ["HSET", "subject:admin", "tokens_before", "0"],
        ["SET", "audit:anchor", "{}"],
        ["SCAN", "0"],
        ["EVAL", "return redis.call('DEL', ARGV[1])", "0", "revoked:jti:it-probe"],
    ],
    "keys": [
        ["SET", "auth:session:it-forged", "{}"],
        ["GET", "auth:signing_keys"],
        ["HSET", "subject:admin", "keys_before", "0"],
        ["XRANGE", "audit:events", "-", "+"],
        ["DEL", "rl:sub:admin"],
    ],
    "auth": [
        ["XREADGROUP", "GROUP", "audit-collectors", "it", "STREAMS", "audit:events", ">"],
        ["XTRIM", "audit:events", "MAXLEN", "0"],
        ["GET", "keys:signing_key"],
        ["SET", "audit:anchor", "{}"],
    ],
    "audit": [
        ["SET", "auth:session:it-forged", "{}"],
        ["DEL", "revoked:jti:it-probe"],
        ["PUBLISH", "apikeys:revoked", "it"],
        ["GET", "keys:signing_key"],
    ],
}


def _attempt(stack: Stack, service: str, commands: list[list[str]]) -> list[str]:
    out = stack.exec(service, "python", "-c", ATTEMPT, json.dumps(commands))
    result: list[str] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("service", sorted(FORBIDDEN))
def test_each_service_is_refused_what_it_does_not_own(stack: Stack, service: str) -> None:
    commands = FORBIDDEN[service]
    assert _attempt(stack, service, commands) == ["NOPERM"] * len(commands)


def test_a_publisher_may_append_to_the_audit_stream_and_nothing_more(stack: Stack) -> None:
    # XADD works for tools (it is how every service audits), reading it back does not.
    outcomes = _attempt(
        stack, "tools", [["XADD", "audit:events", "*", "probe", "1"], ["XLEN", "audit:events"]]
    )
    assert outcomes == ["ok", "NOPERM"]


def test_nobody_gets_in_without_a_user(stack: Stack) -> None:
    out = stack.exec("redis", "sh", "-c", "redis-cli GET auth:user:admin 2>&1; true")
    assert "NOAUTH" in out
    # The health user answers PING, and nothing else.
    probe = (
        'export REDISCLI_AUTH="$REDIS_PASSWORD_HEALTH"; redis-cli --user health ping; '
        "redis-cli --user health GET auth:user:admin 2>&1; true"
    )
    answers = stack.exec("redis", "sh", "-c", probe).split()
    assert answers[0] == "PONG" and "NOPERM" in answers
