"""auth, keys and tools cannot disagree about roles: each reads the shipped policy files
through its own loading path and they compute the same role -> permission map and the
same offered scopes (issue 24: "they read the same file; test that they do").

Each service is loaded as its container loads it: settings from the environment with
BASTION_POLICY_FILE set (`load_settings`), and for tools its `__main__` policy loader,
which also resolves the upstreams' secret references: the test gives it those (an
environment variable, and the test file's `${file:...}` pointed at a temporary file),
and nothing else about the file changes.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx2
import pytest

from bastion_auth.settings import Settings as AuthSettings
from bastion_common.permissions import BUILTIN_PERMISSIONS, ROLES
from bastion_common.policyfile import load_policy
from bastion_common.settings import load_settings
from bastion_keys.settings import Settings as KeysSettings
from bastion_tools.__main__ import load_policy_or_exit
from bastion_tools.app import create_app
from bastion_tools.settings import Settings as ToolsSettings

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[2]
FILES = {
    "example": ROOT / "deploy" / "policy.example.yaml",
    "test": ROOT / "deploy" / "upstreams" / "policy.test.yaml",
}
TOOLS = "http://localhost:8003/mcp"
KEYS = "http://localhost:8002"
SECRET = "s3cret-" + "Zq8xK2vLp9Wm4Rt7Yb3Nc6Hd1Fg5Js0Ae"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _policy_file(name: str, tmp_path: Path) -> Path:
    """The shipped file, with any `${file:/run/...}` secret pointed at a temporary file."""
    text = FILES[name].read_text()
    for target in set(re.findall(r"\$\{file:(/[^}]+)\}", text)):
        secret = tmp_path / Path(target).name
        secret.write_text(SECRET)
        text = text.replace(f"${{file:{target}}}", f"${{file:{secret}}}")
    path = tmp_path / FILES[name].name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(FILES))
async def test_auth_keys_and_tools_compute_the_same_roles_and_offered_scopes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _policy_file(name, tmp_path)
    monkeypatch.setenv("BASTION_POLICY_FILE", str(path))
    monkeypatch.setenv("EVERYTHING_TOKEN", SECRET)
    monkeypatch.setenv("AUTH_KEY_ENCRYPTION_KEY", "kek-" + "Hq7Lp2Wx9Zm4Rt6Yb1Nc8Vd3Fg5Js0Ae")
    monkeypatch.setenv("AUTH_SESSION_SECRET", "ses-" + "Pw4Zr8Lq1Xm6Tn3Vb9Hc2Kd7Fg5Js0Ae")
    monkeypatch.setenv("AUTH_TOOLS_RESOURCE", TOOLS)
    monkeypatch.setenv("AUTH_KEYS_RESOURCE", KEYS)
    monkeypatch.setenv("KEYS_HMAC_SECRET", "hm-" + "Lq9Zx2Wm7Rt4Yb1Nc6Vd3Fg8Js5Ae0Hk")
    monkeypatch.setenv("KEYS_KEY_ENCRYPTION_KEY", "kk-" + "Rt4Yb1Nc6Vd3Fg8Js5Ae0HkLq9Zx2Wm7")
    monkeypatch.setenv("KEYS_TOOLS_RESOURCE", TOOLS)
    monkeypatch.setenv("TOOLS_CLIENT_SECRET", "cs-" + "Nc6Vd3Fg8Js5Ae0HkLq9Zx2Wm7Rt4Yb1")
    monkeypatch.setenv("TOOLS_PUBLIC_URL", "http://localhost:8003")
    monkeypatch.setenv("TOOLS_SPOOL_DIR", str(tmp_path / "spool"))

    auth = load_settings(AuthSettings)
    keys = load_settings(KeysSettings)
    tools_settings = load_settings(ToolsSettings)
    policy = load_policy_or_exit(tools_settings)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=create_app(tools_settings, policy)),
        base_url="http://localhost:8003",
    ) as http:
        served = (await http.get("/.well-known/oauth-protected-resource/mcp")).json()

    # Role -> permissions, and the rate limits the guard applies.
    assert dict(auth.roles.permissions) == dict(keys.roles.permissions)
    assert dict(keys.roles.permissions) == dict(policy.role_table.permissions)
    assert dict(auth.roles.rate_limits) == dict(policy.role_table.rate_limits)
    # What each service offers at the tools resource (and keys for itself).
    offered = policy.role_table.offered
    assert auth.resources[TOOLS] == offered
    assert auth.resources[KEYS] == offered
    assert keys.offered_scopes()[TOOLS] == offered
    assert set(served["scopes_supported"]) == offered
    # Upstream permissions are real: every one some role holds is offered everywhere.
    upstream = offered - BUILTIN_PERMISSIONS
    assert upstream and upstream <= auth.roles.permissions_for(auth.roles.names)
    assert not policy.role_table.warnings  # the shipped files leave no tool unreachable


def test_the_test_file_defines_a_role_no_constant_knows() -> None:
    table = load_policy(FILES["test"], resolve_secrets=False).role_table
    assert "timekeeper" not in ROLES
    assert table.permissions["timekeeper"] == {"time:read"}
