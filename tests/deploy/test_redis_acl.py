"""Redis ACL users per service: a real redis-server started the way the container starts
it (deploy/redis/start.sh with deploy/redis/users.acl), attacked with each service's
credentials. Every forbidden command must fail with NOPERM; what the service needs must
still work."""

from __future__ import annotations

import inspect
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.retry import Retry

import bastion_audit.redis_keys as audit_keys
import bastion_auth.store as auth_store
import bastion_keys.store as keys_store
import bastion_tools.store as tools_store
from bastion_common import audit, contracts, subjects, tokens
from bastion_common.audit import AUDIT_STREAM
from bastion_common.redisacl import AclUser, Lifetime
from bastion_common.subjects import subject_key
from bastion_common.tokens import denylist_key
from deploy import redis_acl
from tests.redis_process import free_port

ROOT = Path(__file__).resolve().parents[2]
START = ROOT / "deploy" / "redis" / "start.sh"
USERS = ("auth", "keys", "tools", "audit", "health")


class AclRedis:
    def __init__(self, port: int, passwords: dict[str, str]) -> None:
        self.port = port
        self.passwords = passwords

    def client(self, user: str) -> redis.Redis:
        return redis.Redis(
            port=self.port, username=user, password=self.passwords[user], socket_timeout=2
        )


def _start(
    tmp: Path, env: dict[str, str], port: int, *, capture: bool = False, aof: bool = False
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - the repository's own start script
        ["sh", str(START), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp),
         "--appendonly", "yes" if aof else "no"],
        env={"PATH": os.environ["PATH"], "BASTION_ACL_SOURCE": str(redis_acl.ACL_FILE),
             "BASTION_ACL_RENDERED": str(tmp / "users.acl"), **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
    )  # fmt: skip


def _passwords() -> tuple[dict[str, str], dict[str, str]]:
    passwords = {user: secrets.token_urlsafe(48) for user in USERS}
    return passwords, {f"REDIS_PASSWORD_{user.upper()}": pw for user, pw in passwords.items()}


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    passwords, env = _passwords()
    port = free_port()
    proc = _start(tmp_path_factory.mktemp("acl"), env, port)
    server = AclRedis(port, passwords)
    _wait_ready(server, proc)
    yield server
    proc.terminate()
    proc.wait(timeout=10)


def _wait_ready(server: AclRedis, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            if server.client("health").ping():
                break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


def _refused(client: redis.Redis, *command: object) -> None:
    with pytest.raises(NoPermissionError):
        client.execute_command(*command)


def test_the_acl_file_is_what_the_key_owners_declare() -> None:
    assert redis_acl.main(["--check"]) == 0, "run python deploy/redis_acl.py"


def _key_names(module: ModuleType) -> list[str]:
    """Every key a store module names: its key templates and its key functions (not the
    shared names it imports: their owners grant those)."""
    shared = {n for m in (audit, contracts, subjects, tokens) for n in vars(m)}
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or name in shared or name in ("KEY_PATTERN", "KEY_PATTERNS"):
            continue
        if isinstance(value, str) and ":" in value and " " not in value:
            names.append(value.format_map(_Anything()))
        elif inspect.isfunction(value) and name.endswith("_key"):
            if value.__module__ == module.__name__:
                names.append(value(*["x"] * len(inspect.signature(value).parameters)))
    return names


class _Anything(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "x"


@pytest.mark.parametrize(
    ("module", "user", "minimum"),
    [(auth_store, auth_store.REDIS_ACL, 20), (keys_store, keys_store.REDIS_ACL, 6),
     (tools_store, tools_store.REDIS_ACL, 3), (audit_keys, audit_keys.REDIS_ACL, 2)],
)  # fmt: skip
def test_every_key_a_service_names_is_inside_its_own_acl(
    module: ModuleType, user: AclUser, minimum: int
) -> None:
    names = _key_names(module)
    assert len(names) >= minimum  # the scan found the module's keys
    for key in names:
        assert user.may(key, "RW"), f"{module.__name__} names {key!r} outside its ACL"


@pytest.mark.parametrize("module", [auth_store, keys_store, tools_store, audit_keys])
def test_every_key_a_service_names_has_one_declared_lifetime(module: ModuleType) -> None:
    # A TTL or a stated bound (Redis never evicts): a new key without one fails here
    # before the stack's keyspace scan (tests/integration/test_state_bounds.py) sees it.
    lifetimes: tuple[Lifetime, ...] = module.LIFETIMES
    for key in _key_names(module):
        matching = [lifetime.pattern for lifetime in redis_acl.LIFETIMES if lifetime.matches(key)]
        assert len(matching) == 1, f"{module.__name__} names {key!r}: declared by {matching}"
        assert any(lifetime.matches(key) for lifetime in lifetimes), f"{key!r} not in its owner"
    for lifetime in lifetimes:
        example = lifetime.pattern.replace("*", "x")
        assert module.REDIS_ACL.may(example, "W"), f"{lifetime.pattern} outside its owner's ACL"
        assert lifetime.bound is None or len(lifetime.bound) > 5  # a bound says what it is


def test_the_default_user_is_off(acl_redis: AclRedis) -> None:
    def client(**auth: str) -> redis.Redis:
        return redis.Redis(
            port=acl_redis.port, socket_timeout=2, retry=Retry(NoBackoff(), 0), **auth
        )

    with pytest.raises((AuthenticationError, ResponseError), match="NOAUTH|authenticated"):
        client().get("auth:user:admin")
    with pytest.raises(AuthenticationError):
        client(username="default", password="x").ping()
    with pytest.raises(AuthenticationError):
        client(username="tools", password="guess").ping()


def test_transactions_survive_a_restart_from_the_append_only_file(tmp_path: Path) -> None:
    """Redis 7.0 replays the append-only file as the default user and re-checks the ACL at
    EXEC (redis/redis#14541). With the default user at -@all, every MULTI/EXEC and every
    script that wrote more than one key was skipped on restart: pinned tool definitions
    lost, a disabled person enabled again. Writes of each kind must all come back."""
    passwords, env = _passwords()
    port = free_port()
    server = AclRedis(port, passwords)
    proc = _start(tmp_path, env, port, aof=True)
    _wait_ready(server, proc)
    auth, tools = server.client("auth"), server.client("tools")
    auth.set("auth:user:plain", "1")
    with auth.pipeline(transaction=True) as tx:
        tx.set("auth:user:in-multi", "1").hset(subject_key("alice"), "disabled", "1").execute()
    tools.eval(
        "redis.call('SET', KEYS[1], '1'); redis.call('SET', KEYS[2], '1')",
        2, "gw:pins:time", "gw:seen:time",
    )  # fmt: skip
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    proc = _start(tmp_path, env, port, aof=True)
    try:
        _wait_ready(server, proc)
        auth, tools = server.client("auth"), server.client("tools")
        assert auth.get("auth:user:plain") == b"1"
        assert auth.get("auth:user:in-multi") == b"1"
        assert auth.hget(subject_key("alice"), "disabled") == b"1"
        assert tools.get("gw:pins:time") == tools.get("gw:seen:time") == b"1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_does_not_start_when_a_users_password_is_missing(tmp_path: Path) -> None:
    env = {f"REDIS_PASSWORD_{u.upper()}": secrets.token_urlsafe(48) for u in USERS}
    del env["REDIS_PASSWORD_TOOLS"]
    proc = _start(tmp_path, env, free_port(), capture=True)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert b"REDIS_PASSWORD_TOOLS is missing" in err
    assert not (tmp_path / "users.acl").read_text().count("tools")


REFUSED: dict[str, list[tuple[object, ...]]] = {
    "tools": [
        ("GET", "auth:session:abc"),  # read a live browser session
        ("SET", "auth:session:abc", "{}"),  # forge one
        ("XDEL", AUDIT_STREAM, "1-1"),  # cut the audit record
        ("XREADGROUP", "GROUP", "audit-collectors", "x", "STREAMS", AUDIT_STREAM, ">"),
        ("XACK", AUDIT_STREAM, "audit-collectors", "1-1"),
        ("XTRIM", AUDIT_STREAM, "MAXLEN", "0"),
        ("XRANGE", AUDIT_STREAM, "-", "+"),
        ("DEL", denylist_key("jti-1")),  # un-revoke a token
        ("HSET", subject_key("alice"), "tokens_before", "0"),  # undo a sign-out
        ("SET", "apikeys:idx:abc", "key-1"),
        ("PUBLISH", "apikeys:revoked", "key-1"),
        ("SET", "audit:anchor", "{}"),
        ("SCAN", "0"),  # key names hold session ids
        ("KEYS", "*"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("ACL", "LIST"),
    ],
    "keys": [
        ("SET", "auth:session:abc", "{}"),
        ("GET", "auth:user:admin"),
        ("HSET", subject_key("alice"), "keys_before", "0"),
        ("XRANGE", AUDIT_STREAM, "-", "+"),
        ("XACK", AUDIT_STREAM, "audit-collectors", "1-1"),
        ("DEL", "rl:sub:alice"),
        ("SUBSCRIBE", "apikeys:revoked"),
        ("SCAN", "0"),
    ],
    "auth": [
        ("XREADGROUP", "GROUP", "audit-collectors", "x", "STREAMS", AUDIT_STREAM, ">"),
        ("XDEL", AUDIT_STREAM, "1-1"),
        ("SET", "audit:anchor", "{}"),
        ("GET", "apikeys:idx:abc"),
        ("SET", "rl:sub:alice", "x"),
        ("FLUSHDB",),
    ],
    "audit": [
        ("SET", "auth:session:abc", "{}"),
        ("DEL", denylist_key("jti-1")),
        ("HSET", subject_key("alice"), "tokens_before", "0"),
        ("PUBLISH", "apikeys:revoked", "key-1"),
        ("SET", "apikeys:rec:key-1", "x"),
        ("XDEL", AUDIT_STREAM, "1-1"),  # the collector trims, it never deletes one entry
    ],
    "health": [
        ("GET", "auth:user:admin"),
        ("XADD", AUDIT_STREAM, "*", "event", "{}"),
    ],
}


@pytest.mark.parametrize(
    ("user", "command"), [(u, c) for u, commands in REFUSED.items() for c in commands]
)
def test_a_forbidden_command_is_refused_with_noperm(
    acl_redis: AclRedis, user: str, command: tuple[object, ...]
) -> None:
    _refused(acl_redis.client(user), *command)


def test_redis_runs_with_bounded_memory_and_never_evicts(acl_redis: AclRedis) -> None:
    memory = acl_redis.client("tools").info("memory")  # what readiness reads
    assert memory["maxmemory_policy"] == "noeviction"
    assert memory["maxmemory"] == 256 * 1024 * 1024


def test_a_script_cannot_write_what_its_user_may_only_read(acl_redis: AclRedis) -> None:
    # tools' bucket script names the denylist key in ARGV; Redis checks each call in it.
    tools = acl_redis.client("tools")
    with pytest.raises(ResponseError, match="can't run this command"):
        tools.eval("return redis.call('DEL', ARGV[1])", 0, denylist_key("jti-1"))
    with pytest.raises(NoPermissionError):  # and as a declared key, not even EXISTS
        tools.eval("return redis.call('EXISTS', KEYS[1])", 1, denylist_key("jti-1"))


def test_what_each_service_needs_is_allowed(acl_redis: AclRedis) -> None:
    auth, keys, tools, collector = (acl_redis.client(u) for u in USERS[:4])
    auth.set("auth:session:abc", "{}", ex=60)
    auth.set(denylist_key("jti-1"), "1", ex=60)
    auth.hset(subject_key("alice"), "tokens_before", "1")
    keys.set(denylist_key("jti-2"), "1", ex=60)
    keys.publish("apikeys:revoked", "key-1")
    assert keys.hget(subject_key("alice"), "tokens_before") == b"1"
    # tools reads the denylist inside its bucket script (the key in ARGV, not KEYS).
    found = tools.eval(
        "return redis.call('EXISTS', ARGV[1])", 1, "rl:sub:alice", denylist_key("jti-1")
    )
    assert found == 1
    tools.set("weather:obs:paris", "{}", ex=60)
    for client in (auth, keys, tools, collector):
        assert client.xadd(AUDIT_STREAM, {"event": "{}"})
    collector.xgroup_create(AUDIT_STREAM, "audit-collectors", id="0", mkstream=True)
    read: Any = collector.xreadgroup("audit-collectors", "c1", {AUDIT_STREAM: ">"}, count=10)
    ids = [entry_id for entry_id, _ in read[0][1]]
    assert len(ids) == 4
    assert collector.xack(AUDIT_STREAM, "audit-collectors", *ids) == 4
    collector.set("audit:anchor", "{}")
    assert collector.exists(denylist_key("jti-1")) == 1
