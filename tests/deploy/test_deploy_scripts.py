"""The deploy scripts: the image's runtime lock and the generated env file."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from bastion_common.settings import check_secret_strength
from deploy.runtime_lock import runtime_subset

ROOT = Path(__file__).resolve().parents[2]


def _names(lock_text: str) -> set[str]:
    return {line.split("==")[0].lower() for line in lock_text.splitlines() if "==" in line}


def test_the_image_lock_keeps_runtime_packages_and_drops_dev_tools() -> None:
    full = (ROOT / "requirements.lock").read_text()
    subset = runtime_subset(full)
    names = _names(subset)
    assert {"fastapi", "uvicorn", "redis", "pyjwt", "mcp", "authlib", "structlog"} <= names
    assert not names & {"pytest", "mypy", "ruff", "testcontainers", "hatchling"}
    assert "--hash=sha256:" in subset
    assert names < _names(full)


def test_gen_env_writes_strong_secrets_with_mode_0600_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "x.env"
    subprocess.run(["bash", str(ROOT / "deploy/gen-env.sh"), str(target)], check=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    first = target.read_text()
    values = dict(
        line.split("=", 1) for line in first.splitlines() if line and not line.startswith("#")
    )
    secrets = {k: v for k, v in values.items() if k != "BOOTSTRAP_ADMIN_USERNAME"}
    users = ("AUTH", "KEYS", "TOOLS", "AUDIT", "HEALTH")
    assert {f"REDIS_PASSWORD_{u}" for u in users} <= secrets.keys()  # deploy/redis/users.acl
    assert {f"EVENT_KEY_{u}" for u in users[:4]} <= secrets.keys()
    for name, value in secrets.items():
        if name == "BOOTSTRAP_ADMIN_PASSWORD":
            assert len(value) >= 20, name
        else:
            assert check_secret_strength(value) is None, name
    subprocess.run(["bash", str(ROOT / "deploy/gen-env.sh"), str(target)], check=True)
    assert target.read_text() == first


def test_the_env_file_and_lock_urls_are_never_committed() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/.env" in ignored
    assert "uv.lock" in ignored
    assert "https://" not in (ROOT / "requirements.lock").read_text()


def test_gen_env_adds_the_secrets_an_older_file_lacks_and_changes_nothing_else(
    tmp_path: Path,
) -> None:
    target = tmp_path / "old.env"
    target.write_text("REDIS_PASSWORD=an-old-one\nTOOLS_CLIENT_SECRET=kept-as-it-was\n")
    subprocess.run(["bash", str(ROOT / "deploy/gen-env.sh"), str(target)], check=True)
    lines = target.read_text().splitlines()
    assert lines[:2] == ["REDIS_PASSWORD=an-old-one", "TOOLS_CLIENT_SECRET=kept-as-it-was"]
    names = [line.split("=", 1)[0] for line in lines]
    assert names.count("TOOLS_CLIENT_SECRET") == 1
    assert "REDIS_PASSWORD_TOOLS" in names and "EVENT_KEY_AUTH" in names
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
