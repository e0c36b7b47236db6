"""The gateway: every upstream's link, and the tools it serves or holds.

Each listing an upstream sends is reconciled with the pins (`pins`), then its tools
replace that upstream's previous ones: served when their definition is pinned (or the
upstream's pinning is `auto` or `off`), held when it changed or is new. Held tools keep
their rule, so RBAC still judges a call to one, which is then refused with a clear
error. An upstream that is down keeps its tools listed; calls to it get an error naming
it. `rules` is what the guard and the policy judge calls by: built-in tools and these.
A stdio upstream's link runs its process (`stdio`); a per-principal one's is the
discovery process, and calls go to the caller's own process (`processes`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp_types import CallToolResult

from bastion_common.logging import get_logger
from bastion_common.policyfile import Policy, UpstreamPolicy
from bastion_tools.gateway.definitions import (
    GatewayTool,
    canonical,
    definition_of,
    digest,
    gateway_tool,
)
from bastion_tools.gateway.link import UpstreamLink
from bastion_tools.gateway.pins import Held, PinStatus, PinStore
from bastion_tools.gateway.processes import PrincipalProcesses
from bastion_tools.gateway.record import GatewayRecord
from bastion_tools.gateway.schemas import SchemaProblem
from bastion_tools.gateway.stdio import DEFAULT_PATH, StdioLink, process_directory
from bastion_tools.guard.rbac import ToolRule

__all__ = ["Gateway", "Rules"]

log = get_logger(__name__)
_SERVED = frozenset({"same", "pinned", "changed", "added"})
# What one upstream may make this service hold: more is ignored (a listing) or refused
# (a definition), so that a hostile upstream cannot fill memory or Redis.
MAX_TOOLS_PER_UPSTREAM = 1000
MAX_DEFINITION_BYTES = 64 * 1024


class Gateway:
    def __init__(
        self,
        policy: Policy,
        pins: PinStore,
        record: GatewayRecord,
        reserved: frozenset[str],
        *,
        stdio_root: Path = Path("/stdio"),
        stdio_path: str = DEFAULT_PATH,
    ) -> None:
        self.policy = policy
        self.pins = pins
        self.record = record
        self._reserved = reserved  # built-in tool names: an upstream cannot shadow them
        self._stdio_root, self._stdio_path = stdio_root, stdio_path
        self.pools: dict[str, PrincipalProcesses] = {}
        self.links = {
            name: self._link(name, upstream) for name, upstream in policy.mcp_servers.items()
        }
        self.tools: dict[str, GatewayTool] = {}
        self.held: dict[str, GatewayTool] = {}
        self._refused: set[str] = set()  # digests of unusable definitions, recorded once

    def _link(self, name: str, upstream: UpstreamPolicy) -> UpstreamLink:
        if not upstream.stdio:
            return UpstreamLink(name, upstream, self.apply)
        if upstream.isolation == "per-principal":
            pool = PrincipalProcesses(name, upstream, self.apply, root=self._stdio_root,
                                      path=self._stdio_path)  # fmt: skip
            self.pools[name] = pool
            return pool.discovery
        directory = process_directory(self._stdio_root, name, None)
        return StdioLink(name, upstream, self.apply, directory=directory, path=self._stdio_path)

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            for name, link in self.links.items():
                pool = self.pools.get(name)
                tasks.start_soon(link.run if pool is None else pool.run)

    async def call(
        self, upstream: str, tool: str, arguments: dict[str, Any], subject: str
    ) -> CallToolResult:
        """Forward one call: to the upstream's link, or to the caller's own process."""
        pool = self.pools.get(upstream)
        if pool is not None:
            return await pool.call(tool, arguments, subject)
        return await self.links[upstream].call(tool, arguments)

    async def settle(self, timeout: float) -> None:
        """Wait up to `timeout` for every upstream's first connection attempt to end."""
        with anyio.move_on_after(timeout):
            for link in self.links.values():
                await link.settled.wait()

    def check(self, name: str) -> Callable[[], Awaitable[str | None]]:
        """The readiness report of one upstream: its state, never a failure of `tools`."""

        async def report() -> str:
            link, pool = self.links[name], self.pools.get(name)
            processes = f", {pool.report()}" if pool is not None else ""
            if link.state == "up":
                return f"up (circuit {link.breaker.state}{processes})"
            return f"{link.state} ({link.reason or 'connecting'}{processes})"

        return report

    def status(self) -> dict[str, dict[str, Any]]:
        """Each upstream's state for the readiness report (no URL, no header)."""
        out: dict[str, dict[str, Any]] = {}
        for name, link in self.links.items():
            out[name] = {
                "state": link.state,
                "reason": link.reason,
                "circuit": link.breaker.state,
                "tools": sum(1 for t in self.tools.values() if t.upstream == name),
                "held": sum(1 for t in self.held.values() if t.upstream == name),
            }
            if name in self.pools:
                out[name]["processes"] = len(self.pools[name].running)
        return out

    async def relist(self, upstream: str) -> None:
        """List `upstream` again now (after an approval)."""
        await self.links[upstream].refresh()

    async def approve(self, upstream: str, tool: str, expected_digest: str, by: str) -> Held | None:
        approved = await self.pins.approve(upstream, tool, expected_digest)
        if approved is not None:
            self.record.approved(upstream, tool, approved.digest, by)
            log.info("gateway.approved", upstream=upstream, tool=tool, by=by)
        return approved

    async def apply(self, link: UpstreamLink, listed: list[types.Tool]) -> None:
        """Reconcile one listing of `link`'s upstream with the pins and serve the result."""
        name, upstream = link.name, link.policy
        prefix = self.policy.prefix_of(name)
        definitions: dict[str, str] = {}
        parsed: dict[str, dict[str, Any]] = {}
        if len(listed) > MAX_TOOLS_PER_UPSTREAM:
            log.warning("gateway.listing_cut", upstream=name, listed=len(listed))
        for tool in listed[:MAX_TOOLS_PER_UPSTREAM]:
            if tool.name in definitions:
                continue  # a listing that names a tool twice: the first one counts
            definition = definition_of(tool)
            text = canonical(definition)
            if len(text.encode()) > MAX_DEFINITION_BYTES:
                self._refuse(name, tool.name, digest(text), "definition", "is larger than 64 KiB")
                continue
            parsed[tool.name], definitions[tool.name] = definition, text
        statuses: Mapping[str, PinStatus]
        if upstream.pinning == "off":
            statuses = dict.fromkeys(definitions, "same")
        else:
            # Redis down: an exception, and the upstream keeps what it served (fail closed
            # for anything new).
            statuses = await self.pins.reconcile(name, upstream.pinning, definitions)
        served: dict[str, GatewayTool] = {}
        held: dict[str, GatewayTool] = {}
        for tool_name, definition in parsed.items():
            status = statuses.get(tool_name, "held")
            hashed = digest(definitions[tool_name])
            if status not in ("same", "still_held"):
                self.record.definition(status, name, tool_name, hashed)
            made = gateway_tool(name, prefix, upstream, definition)
            if isinstance(made, SchemaProblem):
                self._refuse(name, tool_name, hashed, made.where, made.problem)
                continue
            if made is None or made.name in self._reserved:
                continue
            (served if status in _SERVED else held)[made.name] = made
        self.tools = {k: v for k, v in self.tools.items() if v.upstream != name} | served
        self.held = {k: v for k, v in self.held.items() if v.upstream != name} | held
        log.info("gateway.listed", upstream=name, served=len(served), held=len(held))

    def _refuse(self, upstream: str, tool: str, hashed: str, where: str, problem: str) -> None:
        if hashed not in self._refused:
            self._refused.add(hashed)
            self.record.unusable(upstream, tool, where, problem)


class Rules(Mapping[str, ToolRule]):
    """Built-in tools' rules, then the gateway's (served and held), read live."""

    def __init__(self, builtin: Mapping[str, ToolRule], gateway: Gateway) -> None:
        self._builtin = builtin
        self._gateway = gateway

    def __getitem__(self, name: str) -> ToolRule:
        rule = self._builtin.get(name)
        if rule is None:
            rule = self._gateway.tools.get(name) or self._gateway.held.get(name)
        if rule is None:
            raise KeyError(name)
        return rule

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        yield from self._builtin
        yield from self._gateway.tools
        yield from self._gateway.held

    def __len__(self) -> int:
        return len(self._builtin) + len(self._gateway.tools) + len(self._gateway.held)
