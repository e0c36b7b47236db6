"""The policy file's `roles:` section (bastion_common.policyroles).

Without it the built-in roles apply exactly; with it, it defines every role there is,
an upstream's permissions are real permissions a role can hold, and each problem is one
line naming its place. A permission no role holds is a warning, not an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion_common.permissions import (
    BUILTIN_PERMISSIONS,
    DEFAULT_RATE_LIMITS,
    DEFAULT_ROLES,
    ROLE_PERMISSIONS,
)
from bastion_common.policyfile import PolicyError, load_policy, parse_policy

UPSTREAMS = """
mcpServers:
  everything:
    url: http://everything:3001/mcp
    prefix: ev
    tools:
      get-env: {permission: ev:env}
      nuke: {permission: ev:nuke, deny: true}
  time:
    url: http://time:3002/mcp
    permissions: {write: clock:set}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="p.yaml")
    return caught.value.problems


def test_a_file_without_roles_keeps_the_built_in_roles_and_limits() -> None:
    table = parse_policy(UPSTREAMS).role_table
    assert dict(table.permissions) == ROLE_PERMISSIONS
    assert dict(table.rate_limits) == DEFAULT_RATE_LIMITS
    assert parse_policy("").role_table == DEFAULT_ROLES
    assert parse_policy("version: 1\n").role_table == DEFAULT_ROLES


def test_each_upstream_offers_its_prefix_permissions_and_its_tools_own() -> None:
    table = parse_policy(UPSTREAMS).role_table
    assert table.offered == BUILTIN_PERMISSIONS | {
        "ev:read", "ev:write", "ev:env", "time:read", "clock:set",
    }  # fmt: skip
    assert "ev:nuke" not in table.offered  # a denied tool offers nothing


def test_roles_define_every_role_with_upstream_permissions_and_limits() -> None:
    table = parse_policy(
        "roles:\n"
        "  timekeeper:\n"
        "    permissions: [time:read]\n"
        "    rate_limit: {capacity: 7, refill_per_second: 0.5}\n"
        "  ops: {permissions: [ev:env, clock:set, metrics:view]}\n" + UPSTREAMS
    ).role_table
    assert table.names == ("timekeeper", "ops")
    assert table.permissions_for(["timekeeper"]) == {"time:read"}
    assert table.permissions_for(["guest", "admin"]) == frozenset()  # not roles of this file
    assert table.rate_limits["timekeeper"] == (7, 0.5)
    assert table.rate_limits["ops"] == (50, 1.0)  # none named: the smallest built-in bucket


def test_a_role_naming_a_permission_nothing_offers_is_refused_naming_the_place() -> None:
    problems = _problems(
        "roles:\n  timekeeper: {permissions: [time:reed, ev:nuke, time:read]}\n" + UPSTREAMS
    )
    assert problems == [
        "p.yaml: roles.timekeeper.permissions: ev:nuke is offered by nothing (neither a"
        " built-in tool nor an upstream)",
        "p.yaml: roles.timekeeper.permissions: time:reed is offered by nothing (neither a"
        " built-in tool nor an upstream)",
    ]


@pytest.mark.parametrize(
    ("roles", "fragment"),
    [
        ("  Admin: {permissions: [admin:users]}", "p.yaml: roles.Admin.[key]: String should match"),
        ("  ok: {permissions: [Admin]}", "p.yaml: roles.ok.permissions.0: String should match"),
        ("  ok: {permissions: [weather:read], grants: x}", "p.yaml: roles.ok.grants: Extra"),
        ("  ok: {}", "p.yaml: roles.ok.permissions: Field required"),
        (
            "  ok: {permissions: [], rate_limit: {capacity: 0, refill_per_second: 1}}",
            "p.yaml: roles.ok.rate_limit.capacity: Input should be greater than or equal to 1",
        ),
        (
            "  ok: {permissions: [], rate_limit: {capacity: 5, refill_per_second: 0}}",
            "p.yaml: roles.ok.rate_limit.refill_per_second: Input should be greater than 0",
        ),
    ],
)
def test_bad_roles_are_one_line_each_naming_the_place(roles: str, fragment: str) -> None:
    problems = _problems("roles:\n" + roles + "\n")
    assert len(problems) == 1 and problems[0].startswith(fragment), problems


def test_empty_roles_are_refused_rather_than_meaning_nobody_may_do_anything() -> None:
    assert _problems("roles: {}\n") == [
        "p.yaml: roles: Dictionary should have at least 1 item after validation, not 0"
    ]


def test_an_upstream_permission_no_role_holds_is_a_warning_not_an_error() -> None:
    table = parse_policy(
        "roles:\n  timekeeper: {permissions: [time:read]}\n" + UPSTREAMS, source="p.yaml"
    ).role_table
    assert "p.yaml: mcpServers.time.permissions.write: no role holds clock:set: its tools are" \
        " refused to everyone" in table.warnings  # fmt: skip
    assert any("mcpServers.everything.tools.get-env.permission: no role holds ev:env" in w
               for w in table.warnings)  # fmt: skip
    assert not any("time:read" in w for w in table.warnings)


def test_auth_and_keys_read_the_roles_without_the_upstream_secrets(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "roles:\n  timekeeper: {permissions: [time:read]}\n"
        "mcpServers:\n  time:\n    url: http://time/mcp\n"
        "    headers: {X-Api-Key: '${env:TIME_KEY}'}\n"
    )
    with pytest.raises(PolicyError, match="environment variable TIME_KEY is not set"):
        load_policy(path, environ={})  # tools: the secret must be there
    policy = load_policy(path, environ={}, resolve_secrets=False)
    assert policy.role_table.permissions_for(["timekeeper"]) == {"time:read"}
    assert policy.mcp_servers["time"].secret_headers == {}
    with pytest.raises(PolicyError, match="must be a secret reference"):
        parse_policy(
            "mcpServers:\n  t: {url: 'http://t/mcp', headers: {X-K: inline}}\n",
            resolve_secrets=False,
        )  # a literal is still refused, resolved or not
