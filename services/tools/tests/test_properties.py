"""Property tests (hypothesis) where a parser meets an attacker.

- The guard's reading of a JSON-RPC body and the SDK's agree: whatever the body (batches,
  duplicate keys, escaped names, junk), a tool the token's scopes do not allow never runs.
- Sandbox paths: no generated path reads a file outside the root or writes one there,
  through `..`, encodings, look-alikes or symbolic links planted inside the root.
- The token bucket: over any sequence of costs and pauses, what is allowed never exceeds
  the capacity plus the refill over the time that passed.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mcp.server.mcpserver import MCPServer
from services.tools.tests.helpers import MCP_HEADERS
from services.tools.tests.test_guard_library import secured, token

from bastion_common.redis import create_redis
from bastion_tools.ratelimit import RateLimiter
from bastion_tools.tools.sandbox import Sandbox, SandboxError

TOOLS = ("read_note", "delete_note", "forgotten", "nope")
FORBIDDEN = {"delete_note", "forgotten"}  # the token holds notes:read only


def _examples(count: int) -> settings:
    """`count` examples, no deadline (a call through the app or Redis takes its time),
    no example database written into the checkout."""
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


def _escaped(text: str, draw: st.DrawFn) -> str:
    """`text` as a JSON string whose characters are each written plainly or as \\uXXXX."""
    out = [f"\\u{ord(char):04x}" if draw(st.booleans()) else char for char in text]
    return '"' + "".join(out) + '"'


@st.composite
def _object(draw: st.DrawFn, pairs: list[tuple[str, str]]) -> str:
    """A JSON object written by hand, so that a key may repeat."""
    if draw(st.booleans()):  # repeat one key with another value: last or first wins?
        key, _ = draw(st.sampled_from(pairs))
        pairs = [*pairs, (key, draw(st.sampled_from([p[1] for p in pairs])))]
    pairs = draw(st.permutations(pairs))
    return "{" + ",".join(f"{_escaped(k, draw)}:{v}" for k, v in pairs) + "}"


@st.composite
def _call(draw: st.DrawFn) -> str:
    names = draw(st.lists(st.sampled_from(TOOLS), min_size=1, max_size=3))
    params = [("name", _escaped(name, draw)) for name in names]
    params.append(("arguments", '{"name":"groceries"}'))
    method = draw(st.sampled_from(["tools/call", "tools/call", "tools/list", "tools/cal"]))
    message = [
        ("jsonrpc", '"2.0"'),
        ("id", str(draw(st.integers(1, 10**6)))),
        ("method", _escaped(method, draw)),
        ("params", draw(_object(params))),
    ]
    return draw(_object(message))


@st.composite
def _body(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["one", "batch", "junk"]))
    if shape == "junk":
        return draw(st.binary(max_size=200))
    if shape == "one":
        return draw(_call()).encode()
    calls = draw(st.lists(_call(), min_size=1, max_size=4))
    return ("[" + ",".join(calls) + "]").encode()


def _recording_server(ran: list[str]) -> MCPServer[Any]:
    mcp: MCPServer[Any] = MCPServer(name="notes")

    @mcp.tool()
    async def read_note(name: str) -> str:
        ran.append("read_note")
        return f"note {name}"

    @mcp.tool()
    async def delete_note(name: str) -> str:
        ran.append("delete_note")
        return f"deleted {name}"

    @mcp.tool()
    async def forgotten() -> str:
        ran.append("forgotten")
        return "ran"

    return mcp


def test_no_body_runs_a_tool_the_token_does_not_allow(redis_url: str, tmp_path: Path) -> None:
    ran: list[str] = []
    ever: set[str] = set()
    bearer = token("notes:read")
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {bearer}"}
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(
            secured(redis_url, tmp_path, server=_recording_server(ran))
        ) as client,
    ):

        async def post(body: bytes) -> httpx2.Response:
            return await client.post("/mcp", content=body, headers=headers)

        @_examples(300)
        @given(_body())
        def check(body: bytes) -> None:
            ran.clear()
            reply = portal.call(post, body)
            assert reply.status_code < 500, reply.text
            assert not FORBIDDEN & set(ran), (body, ran)
            ever.update(ran)

        check()
    # The bodies did reach the tools: the property does not hold by never calling one.
    assert ever == {"read_note"}


# -- sandbox paths ---------------------------------------------------------------------

_PIECES = [
    "..", ".", "", "a.txt", "notes", "link.txt", "up", "outside.txt", "%2e%2e", "\u2025",
    "\uff0e\uff0e", "..\\", "\\", "\x00", "/", "a.txt/..", "C:", "~", ".hidden.txt", "-x.txt",
    "deep",
]  # fmt: skip


@st.composite
def _path(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(_PIECES) | st.text(max_size=6), max_size=10))
    lead = draw(st.sampled_from(["", "/", "./", "../"]))
    return lead + "/".join(parts)


def _planted(tmp_path: Path) -> tuple[Sandbox, Path]:
    """A root with a file, a symlink to a file outside and one to the directory above;
    the secret outside is what no path may read or overwrite."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "outside.txt").write_text("SECRET")
    root = tmp_path / "root"
    (root / "notes").mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("inside")
    for name, target in (("link.txt", outside / "outside.txt"), ("up", outside)):
        if not (root / name).is_symlink():
            os.symlink(target, root / name)
    return Sandbox(root, extensions=[".txt", ".md"], max_bytes=1024), outside


def test_no_path_reads_or_writes_outside_the_root(tmp_path: Path) -> None:
    sandbox, outside = _planted(tmp_path)
    before = sorted(p.name for p in outside.iterdir())
    read_inside = 0

    @_examples(400)
    @given(path=_path())
    # Good paths, always tried: generation alone sometimes drew none in 400 examples,
    # which failed the check below for nothing.
    @example(path="a.txt")
    @example(path="./notes/../a.txt")
    def check(path: str) -> None:
        nonlocal read_inside
        try:
            text = sandbox.read(path)
            assert "SECRET" not in text
            read_inside += 1
        except SandboxError:
            pass
        try:
            sandbox.write(path, "OVERWRITE")
        except SandboxError:
            pass
        assert (outside / "outside.txt").read_text() == "SECRET"
        assert sorted(p.name for p in outside.iterdir()) == before

    check()
    # Some generated paths were good ones: the property does not hold by refusing all.
    assert read_inside > 0
    for found in sandbox.root.rglob("*"):
        if found.is_file() and not found.is_symlink():
            assert found.resolve().is_relative_to(sandbox.root)


# -- the token bucket ------------------------------------------------------------------

CAPACITY, REFILL = 10, 20.0  # tokens, tokens per second


@_examples(25)
@given(
    steps=st.lists(
        st.tuples(st.integers(1, 6), st.sampled_from([0.0, 0.0, 0.005, 0.02]), st.integers(1, 8)),
        min_size=1,
        max_size=12,
    )
)
def test_the_bucket_never_allows_more_than_capacity_plus_refill(
    redis_url: str, steps: list[tuple[int, float, int]]
) -> None:
    """Each step sends `together` decisions of `cost` at once, then pauses."""

    async def run() -> tuple[int, float]:
        redis = create_redis(redis_url)
        limiter = RateLimiter(redis)
        key = f"prop:bucket:{time.monotonic_ns()}"
        allowed = 0
        started = time.monotonic()
        try:
            for cost, pause, together in steps:
                decisions = await asyncio.gather(
                    *(limiter.take(key, capacity=CAPACITY, refill_per_second=REFILL, cost=cost)
                      for _ in range(together))
                )  # fmt: skip
                allowed += sum(cost for d in decisions if d.allowed)
                await asyncio.sleep(pause)
        finally:
            elapsed = time.monotonic() - started
            await limiter.aclose()
            await redis.aclose()
        return allowed, elapsed

    allowed, elapsed = asyncio.run(run())
    assert allowed <= CAPACITY + REFILL * elapsed
