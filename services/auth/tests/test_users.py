"""Users are changed in one atomic step (issue 22: a role change racing a disable used to
write the old `disabled` back), and the same step keeps the person's shared state."""

from __future__ import annotations

import anyio
import pytest
from services.auth.tests.helpers import ADMIN, Harness

from bastion_common.subjects import read_subject

pytestmark = pytest.mark.anyio


async def test_a_disable_racing_fifty_role_changes_sticks(h: Harness) -> None:
    token = (await h.tokens(resource=ADMIN))["access_token"]
    headers = {"authorization": f"Bearer {token}"}
    await h.ctx.users.create("grace", "grace-password-1", ["user"])
    statuses: list[int] = []

    async def patch(body: dict[str, object]) -> None:
        reply = await h.client.patch("/admin/users/grace", headers=headers, json=body)
        statuses.append(reply.status_code)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(patch, {"roles": ["premium" if i % 2 else "guest"]})
            if i == 25:
                tg.start_soon(patch, {"disabled": True})
    assert statuses == [200] * 51
    grace = await h.ctx.users.get("grace")
    assert grace is not None and grace.disabled
    assert grace.roles in (["guest"], ["premium"])
    state = await read_subject(h.redis, "grace")
    assert state is not None and state.disabled and state.roles == tuple(grace.roles)
    assert state.keys_before is not None and state.tokens_before is not None


async def test_a_bad_change_is_refused_and_changes_nothing(h: Harness) -> None:
    token = (await h.tokens(resource=ADMIN))["access_token"]
    headers = {"authorization": f"Bearer {token}"}
    await h.ctx.users.create("heidi", "heidi-password-1", ["user"])
    before = await h.redis.get("auth:user:heidi")
    for body in ({"roles": ["root"]}, {"roles": []}, {"disabled": "yes"}, {"roles": "admin"}):
        reply = await h.client.patch("/admin/users/heidi", headers=headers, json=body)
        assert reply.status_code == 400 and reply.json()["error"] == "invalid_request"
    assert await h.redis.get("auth:user:heidi") == before
    state = await read_subject(h.redis, "heidi")
    assert state is not None and state.roles == ("user",) and state.tokens_before is None


async def test_an_upgrade_keeps_tokens_and_a_demotion_ends_them(h: Harness) -> None:
    await h.ctx.users.create("ivan", "ivan-password-12", ["user"])
    await h.ctx.users.update("ivan", roles=["premium"])
    state = await read_subject(h.redis, "ivan")
    assert state is not None and state.tokens_before is None
    await h.ctx.users.update("ivan", roles=["guest"])
    state = await read_subject(h.redis, "ivan")
    assert state is not None and state.tokens_before is not None and state.keys_before is None
    assert await h.ctx.users.update("nobody", roles=["guest"]) is None
