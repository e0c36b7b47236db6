"""`make demo` against the test stack: it runs to the end and shows what it promises.

The demo is the first thing a newcomer runs (README), so it is run here as they would run
it (`python -m demo.run`, pointed at this stack's env file) and its printed output is
read: every role's allowed and refused calls, a rate-limit refusal, a revocation taking
effect, the machine client, the brute force, and the security report.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from bastion_common.permissions import ROLE_PERMISSIONS
from tests.integration.conftest import ROOT, Stack
from tests.integration.test_roles import TOOL_PERMISSION

ROLES = ("guest", "user", "premium", "admin")


@pytest.fixture(scope="module")
def demo_output(stack: Stack) -> str:
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    for name in ("AUTH", "KEYS", "TOOLS", "AUDIT"):
        env.pop(f"{name}_PORT", None)  # the stack's env file names them
    run = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "demo.run", "--env-file", str(stack.env_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_the_demo_shows_every_role_allowed_and_refused_exactly_as_designed(
    demo_output: str,
) -> None:
    assert re.search(
        r"Created demo users: demo-guest-\w+, demo-user-\w+, demo-premium-\w+", demo_output
    )
    tools = list(TOOL_PERMISSION)
    rows = {
        cells[0]: cells[1:]
        for line in demo_output.splitlines()
        if (cells := [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]])
        and cells
        and cells[0] in ROLES
    }
    assert set(rows) == set(ROLES)
    for role in ROLES:
        assert len(rows[role]) == len(tools), rows[role]
        for tool, cell in zip(_demo_order(), rows[role], strict=True):
            if TOOL_PERMISSION[tool] in ROLE_PERMISSIONS[role]:
                assert cell == "allowed", (role, tool, cell)
            else:
                assert cell == "refused 403", (role, tool, cell)


def _demo_order() -> list[str]:
    from demo.run import TOOL_CALLS

    return list(TOOL_CALLS)


def test_the_demo_shows_a_rate_limit_refusal(demo_output: str) -> None:
    match = re.search(
        r'call (\d+): 429 Retry-After=(\d+) s, RateLimit-Policy: "principal";q=50;w=\d+,'
        r' RateLimit: "principal";r=0;t=\d+',
        demo_output,
    )
    assert match, demo_output
    # Refused once the guest's bucket is spent (the matrix above drew from it), not at once.
    assert int(match.group(1)) > 1 and int(match.group(2)) >= 1


def test_the_demo_shows_a_third_party_server_behind_the_gateway(demo_output: str) -> None:
    assert re.search(r"upstream tools listed: .*time_get_current_time", demo_output)
    assert re.search(r"gateway: time_get_current_time allowed \(\d{4}-", demo_output)
    assert "gateway: bad arguments rejected invalid arguments" in demo_output


def test_the_demo_shows_a_local_server_with_a_directory_per_person(demo_output: str) -> None:
    seen = dict(
        re.findall(
            r"gateway \(stdio\): (user|premium) fs_list_allowed_directories allowed"
            r" \((/stdio/files/p-[0-9a-f]{32})\)",
            demo_output,
        )
    )
    assert set(seen) == {"user", "premium"} and seen["user"] != seen["premium"], demo_output


def test_the_demo_shows_a_revocation_taking_effect(demo_output: str) -> None:
    assert "revoke -> 200" in demo_output
    assert re.search(r"call after revocation -> 401 .*invalid_token", demo_output)


def test_the_demo_shows_the_machine_client_and_the_brute_force(demo_output: str) -> None:
    assert re.search(r"created key \S+ \(shown once", demo_output)
    for label in ("exchanged token", "key as bearer"):
        assert f"{label}: get_weather allowed, report_weather refused 403" in demo_output
    match = re.search(r"(\d+) of 12 logins refused", demo_output)
    assert match and int(match.group(1)) == 12


def test_the_demo_ends_with_the_security_report(demo_output: str) -> None:
    report = demo_output[demo_output.index("Security report") :]
    counts = {
        cells[0]: int(cells[1])
        for line in report.splitlines()
        if len(cells := [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]) == 2
        and cells[1].isdigit()
    }
    # The refusals the demo itself caused are counted (guest 7, user 4, premium 3).
    assert counts["permission_denials"] >= 14, counts
    assert counts["rate_limit_refusals"] >= 1, counts
    # The demo's brute force against its guest is flagged by name.
    assert any("brute_force" in line and "demo-guest-" in line for line in report.splitlines()), (
        report
    )
