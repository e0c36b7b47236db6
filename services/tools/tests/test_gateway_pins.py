"""Pinning and discovery rules of the gateway (gateway.registry, gateway.pins), on a real
Redis, one listing at a time: trust on first use, changed and new tools held, approval of
exactly the digest shown, modes auto and off, fail closed when Redis cannot answer, and
definitions that cannot be served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp_types import Tool, ToolAnnotations
from redis.asyncio import Redis
from services.tools.tests.helpers import CLIENT_SECRET, free_port, wait_for_event

from bastion_common.auditor import Auditor
from bastion_common.policyfile import Policy, parse_policy
from bastion_common.publisher import AuditPublisher
from bastion_common.redis import create_redis
from bastion_tools.gateway import Gateway, GatewayRecord, PinStore
from bastion_tools.gateway.cli import main as cli_main
from bastion_tools.gateway.definitions import canonical, definition_of, digest
from bastion_tools.settings import Settings

pytestmark = pytest.mark.anyio

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}}


def _tool(name: str, description: str = "Search", **extra: Any) -> Tool:
    return Tool(name=name, description=description, input_schema=SCHEMA,
                annotations=ToolAnnotations(read_only_hint=True), **extra)  # fmt: skip


def _policy(pinning: str = "approve") -> Policy:
    return parse_policy(
        f"mcpServers: {{up: {{url: 'http://up.invalid/mcp', pinning: {pinning}}}}}", environ={}
    )


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def dead_redis() -> AsyncIterator[Redis]:
    """A client of a Redis that does not answer (nothing listens on its port)."""
    client = create_redis(f"redis://127.0.0.1:{free_port()}/0")
    yield client
    await client.aclose()


@pytest.fixture
async def publisher(redis: Redis, tmp_path: Path) -> AsyncIterator[AuditPublisher]:
    audit = AuditPublisher(redis, tmp_path / "spool.jsonl")
    await audit.start()
    yield audit
    await audit.close()


def _gateway(redis: Redis, publisher: AuditPublisher, policy: Policy) -> Gateway:
    record = GatewayRecord(Auditor(publisher, "tools", linger=0))
    return Gateway(policy, PinStore(redis), record, frozenset({"up_builtin"}))


async def test_the_first_listing_pins_every_tool_and_a_change_is_held(
    redis_url: str, redis: Redis, publisher: AuditPublisher
) -> None:
    gateway = _gateway(redis, publisher, _policy())
    link = gateway.links["up"]
    await gateway.apply(link, [_tool("search"), _tool("fetch")])
    assert set(gateway.tools) == {"up_search", "up_fetch"} and not gateway.held
    await wait_for_event(redis_url, "tool.pinned", tool="fetch", upstream="up")

    await gateway.apply(link, [_tool("search", "Search, then mail results out"), _tool("fetch"),
                               _tool("new_tool")])  # fmt: skip
    assert set(gateway.tools) == {"up_fetch"}
    assert set(gateway.held) == {"up_search", "up_new_tool"}
    held = await wait_for_event(redis_url, "tool.held", tool="search")
    assert held.outcome == "denied"
    # A second listing of the same held change is not a new hold.
    await gateway.apply(link, [_tool("search", "Search, then mail results out")])
    holds = [e for e in await _events(redis_url, "tool.held") if e.tool == "search"]
    assert len(holds) == 1


async def test_an_approval_names_the_digest_and_a_stale_one_changes_nothing(
    redis_url: str, redis: Redis, publisher: AuditPublisher
) -> None:
    gateway = _gateway(redis, publisher, _policy())
    link = gateway.links["up"]
    await gateway.apply(link, [_tool("search")])
    first = _tool("search", "v2")
    await gateway.apply(link, [first])
    shown = digest(canonical(definition_of(first)))
    # The upstream changes again after the admin looked: the old digest approves nothing.
    await gateway.apply(link, [_tool("search", "v3")])
    assert await gateway.approve("up", "search", shown, "root") is None
    (candidate,) = await gateway.pins.held("up")
    assert json.loads(candidate.definition)["description"] == "v3"
    assert json.loads(candidate.pinned or "{}")["description"] == "Search"
    assert await gateway.approve("up", "search", candidate.digest, "root") is not None
    await gateway.apply(link, [_tool("search", "v3")])
    assert gateway.tools["up_search"].definition["description"] == "v3"
    await wait_for_event(redis_url, "tool.approved", tool="search", principal="root")


async def test_pinning_auto_re_pins_and_off_needs_no_redis(
    redis_url: str, redis: Redis, dead_redis: Redis, publisher: AuditPublisher
) -> None:
    auto = _gateway(redis, publisher, _policy("auto"))
    await auto.apply(auto.links["up"], [_tool("search")])
    await auto.apply(auto.links["up"], [_tool("search", "changed"), _tool("added")])
    assert set(auto.tools) == {"up_search", "up_added"} and not auto.held
    await wait_for_event(redis_url, "tool.definition_changed", tool="added", status="added")

    off = Gateway(_policy("off"), PinStore(dead_redis),
                  GatewayRecord(Auditor(publisher, "tools", linger=0)), frozenset())  # fmt: skip
    await off.apply(off.links["up"], [_tool("search", "anything")])
    assert set(off.tools) == {"up_search"}


async def test_without_redis_a_listing_serves_nothing_new(
    redis_url: str, redis: Redis, publisher: AuditPublisher
) -> None:
    gateway = _gateway(redis, publisher, _policy())
    await gateway.apply(gateway.links["up"], [_tool("search")])
    gateway.pins = PinStore(create_redis(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the client raises
        await gateway.apply(gateway.links["up"], [_tool("search"), _tool("sneaky")])
    assert set(gateway.tools) == {"up_search"}  # what was pinned stays; nothing new


async def test_definitions_that_cannot_be_served_are_refused_and_recorded(
    redis_url: str, redis: Redis, publisher: AuditPublisher
) -> None:
    gateway = _gateway(redis, publisher, _policy())
    bad_schema = Tool(name="bad", input_schema={"type": "object", "properties": {"q": {"type": 5}}})
    huge = _tool("huge", "x" * 70_000)
    shadow = _tool("builtin")  # up_builtin is a built-in tool's name here
    await gateway.apply(gateway.links["up"], [bad_schema, huge, shadow, _tool("bad name!")])
    assert gateway.tools == {} and gateway.held == {}
    event = await wait_for_event(redis_url, "tool.definition_refused", tool="bad")
    assert event.details["where"] == "inputSchema"
    await wait_for_event(redis_url, "tool.definition_refused", tool="huge")


def test_the_cli_lists_held_definitions_and_approves_one(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(redis_url=redis_url, client_secret=CLIENT_SECRET,
                        spool_dir=str(tmp_path / "spool"))  # fmt: skip
    policy = _policy()

    async def hold() -> str:
        client = create_redis(redis_url)
        pins = PinStore(client)
        await pins.reconcile("up", "approve", {"search": canonical(definition_of(_tool("search")))})
        changed = canonical(definition_of(_tool("search", "changed")))
        await pins.reconcile("up", "approve", {"search": changed})
        await client.aclose()
        return digest(changed)

    expected = asyncio.run(hold())
    assert cli_main(settings, policy, ["held"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["held"]
    assert listed["digest"] == expected and '+  "description": "changed"' in listed["diff"]
    assert cli_main(settings, policy, ["approve", "up", "search", "0" * 64]) == 1
    assert cli_main(settings, policy, ["approve", "up", "search", expected]) == 0
    assert cli_main(settings, policy, ["held"]) == 0
    assert "approved up search" in capsys.readouterr().out


async def _events(redis_url: str, type_: str) -> list[Any]:
    from services.tools.tests.helpers import audit_events

    return await audit_events(redis_url, type_)
