from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from services.auth.tests.helpers import harness, make_settings

from bastion_auth.__main__ import _command, _parser


def _answer(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The command's answer: its last stdout line (logs may come before it in tests)."""
    answer: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return answer


@pytest.mark.anyio
async def test_cli_updates_users_and_rotates_keys(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(redis_url, tmp_path)
    assert await _command(settings, _parser().parse_args(["users", "list"])) == 0
    listed = _answer(capsys)
    assert [u["username"] for u in listed["users"]] == ["admin"]
    args = _parser().parse_args(["users", "update", "admin", "--role", "user", "--disable"])
    assert await _command(settings, args) == 0
    assert _answer(capsys)["disabled"] is True
    assert await _command(settings, _parser().parse_args(["keys", "rotate"])) == 0
    assert _answer(capsys)["kid"]
    assert await _command(settings, _parser().parse_args(["users", "update", "ghost"])) == 1


@pytest.mark.anyio
async def test_bootstrap_admin_is_created_only_when_there_are_no_users(
    redis_url: str, tmp_path: Path
) -> None:
    async with harness(make_settings(redis_url, tmp_path, bootstrap_admin_username="first")) as h:
        assert [u.username for u in await h.ctx.users.all()] == ["first"]
        events = await h.events("user.created")
        assert events[0]["details"]["username"] == "first"
    async with harness(make_settings(redis_url, tmp_path, bootstrap_admin_username="second")) as h:
        assert [u.username for u in await h.ctx.users.all()] == ["first"]
