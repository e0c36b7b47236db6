"""Settings that must stop the service: a shared HS256 secret is refused (issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError
from services.tools.tests.helpers import CLIENT_SECRET

from bastion_tools.settings import Settings

HS_SECRET = "hs-" + "Lq9Zx2Wm7Rt4Yb1Nc6Vd3Fg8Js5Ae0Hk"


def test_a_shared_token_secret_is_refused(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings(token_shared_secret=HS_SECRET)
    assert "HS256 mode is not supported" in str(caught.value)


def test_tools_does_not_start_with_a_shared_token_secret() -> None:
    env = {
        "PATH": os.environ["PATH"],
        "TOOLS_CLIENT_SECRET": CLIENT_SECRET,
        "TOOLS_TOKEN_SHARED_SECRET": HS_SECRET,
    }
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bastion_tools"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "TOOLS_TOKEN_SHARED_SECRET: Value error, HS256 mode is not supported" in done.stderr
    assert "Traceback" not in done.stderr and HS_SECRET not in done.stderr


def test_tools_does_not_start_with_a_bad_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "mcpServers:\n"
        "  a: {url: 'http://a/mcp', headers: {Authorization: 'Bearer sk-inline-0123456789'}}\n"
        "  b: {url: 'http://b/mcp', pinning: never, headers: {X-K: '${env:MISSING_KEY}'}}\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "TOOLS_CLIENT_SECRET": CLIENT_SECRET,
        "TOOLS_POLICY_FILE": str(policy),
    }
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bastion_tools"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    # TOOLS_POLICY_FILE, the setting's earlier name, is still read; the lines name the new one.
    assert lines[0] == "BASTION_POLICY_FILE: the policy file is invalid:"
    assert any(f"{policy}: mcpServers.a.headers.Authorization: must be" in line for line in lines)
    assert any(f"{policy}: mcpServers.b.pinning:" in line for line in lines)
    assert "Traceback" not in done.stderr and "sk-inline" not in done.stderr
