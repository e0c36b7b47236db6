"""Where a forwarded call's time goes on the way out: the gateway's own link to an
upstream, against what the same call costs with less machinery, one run.

Against bench/gateway_upstream.py (pinned to CPU 0), from this process on CPU 1, one
connection, calls one after another, the sides alternating each round:

- `link`: `bastion_tools.gateway.link.UpstreamLink.call`, exactly as the gateway
  forwards (the `mcp` SDK's client session over streamable HTTP on httpx2, with the
  link's breaker, concurrency cap, timeout and metrics);
- `httpx2`: the same JSON-RPC body POSTed with `httpx2.AsyncClient` and the reply
  parsed into a `CallToolResult` (what any call path on the project's HTTP client
  costs at least; no session, no protocol stamping);
- `socket`: the same request written by hand on one keep-alive asyncio stream (the
  upstream's own time plus loopback: the floor).

Then the gateway's checks on the reply, in a loop: arguments against the pinned input
schema, the result against the pinned output schema, and the redaction of credentials.
Prints p50 and this process's CPU per call for each. Writes
bench/results/gateway_client.json.

    .venv/bin/python bench/diagnostics/gateway_client.py [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx2  # noqa: E402 - after the path above, with the rest
from harness import (  # noqa: E402 - needs the path above
    LOAD_CPU,
    PYTHON,
    ROOT,
    SERVER_CPU,
    Processes,
    median,
    pin_self,
    pinned,
    wait_port,
    write_result,
)
from jsonschema.protocols import Validator  # noqa: E402
from mcp_types import CallToolResult  # noqa: E402

from bastion_common.policyfile import UpstreamPolicy  # noqa: E402
from bastion_tools.gateway.link import UpstreamLink  # noqa: E402
from bastion_tools.gateway.results import redacted  # noqa: E402
from bastion_tools.gateway.schemas import SchemaProblem, compile_schema, problems  # noqa: E402

ARGUMENTS = {"message": "hello"}
BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": ARGUMENTS},
    }
).encode()
HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-06-18",
}

Call = Callable[[], Awaitable[Any]]


async def timed(call: Call, n: int) -> dict[str, float]:
    latencies = []
    cpu = time.process_time()
    for _ in range(n):
        started = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - started) * 1000)
    cpu_ms = (time.process_time() - cpu) * 1000 / n
    return {"p50": statistics.median(latencies), "client_cpu_ms": cpu_ms}


async def sides(url: str, port: int) -> tuple[dict[str, Call], Callable[[], Awaitable[None]]]:
    """The three ways to make the call, and what closes them."""

    async def listed(_link: UpstreamLink, _tools: list[Any]) -> None:
        return None

    link = UpstreamLink("up", UpstreamPolicy(url=url, max_concurrency=64), listed)
    runner = asyncio.ensure_future(link.run())
    await asyncio.wait_for(link.settled.wait(), 20)
    if link.state != "up":
        raise RuntimeError(f"the link did not come up: {link.reason}")
    http = httpx2.AsyncClient()
    head = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    request = (head + f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    # One keep-alive connection, opened again when uvicorn closed it (5 s idle).
    conn: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def via_link() -> None:
        if (await link.call("echo", dict(ARGUMENTS))).is_error:
            raise RuntimeError("the upstream refused the call")

    async def via_httpx2() -> None:
        reply = await http.post(url, content=BODY, headers=HEADERS)
        CallToolResult.model_validate(reply.raise_for_status().json()["result"])

    async def via_socket() -> None:
        if not conn or conn[0][0].at_eof():
            conn[:] = [await asyncio.open_connection("127.0.0.1", port)]
        reader, writer = conn[0]
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        json.loads(await reader.readexactly(length))

    async def close() -> None:
        runner.cancel()
        await http.aclose()
        for _, writer in conn:
            writer.close()

    return {"link": via_link, "httpx2": via_httpx2, "socket": via_socket}, close


def compiled(field: str) -> Validator:
    """The pinned schema of an object with one required string `field`."""
    schema = {"type": "object", "properties": {field: {"type": "string"}}, "required": [field]}
    validator = compile_schema(schema, field)
    if isinstance(validator, SchemaProblem):
        raise RuntimeError(validator.problem)
    return validator


def checks(n: int) -> dict[str, float]:
    """CPU per call of the gateway's checks on the echo tool's pinned schemas and reply."""
    inputs, outputs = compiled("message"), compiled("result")
    reply = CallToolResult.model_validate(
        {"content": [{"type": "text", "text": "hello"}], "structuredContent": {"result": "hello"}}
    )
    out = {}
    for name, check in (
        ("arguments", lambda: problems(inputs, ARGUMENTS, "arguments")),
        ("output", lambda: problems(outputs, reply.structured_content, "structuredContent")),
        ("redaction", lambda: redacted(reply)),
    ):
        started = time.process_time()
        for _ in range(n):
            check()
        out[name] = (time.process_time() - started) * 1000 / n
    return out


async def run(calls: int, rounds: int) -> dict[str, Any]:
    with Processes("bench-gateway-client-") as procs:
        port = 19870
        argv = [PYTHON, str(ROOT / "bench" / "gateway_upstream.py"), str(port)]
        procs.start(pinned(argv, SERVER_CPU))
        wait_port(port)
        ways, close = await sides(f"http://127.0.0.1:{port}/mcp", port)
        try:
            for call in ways.values():
                await timed(call, 200)  # warm-up
            measured: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
            for _ in range(rounds):
                for name, call in ways.items():
                    measured[name].append(await timed(call, calls))
        finally:
            await close()
    summary = {
        name: {key: median(r[key] for r in runs) for key in ("p50", "client_cpu_ms")}
        for name, runs in measured.items()
    }
    return {"rounds": measured, "summary": summary, "checks_cpu_ms": checks(calls)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pin_self(LOAD_CPU)
    result = asyncio.run(run(args.calls, args.rounds))
    for name, row in result["summary"].items():
        print(f"{name:8} p50 {row['p50']:.3f} ms  client CPU/call {row['client_cpu_ms']:.3f} ms")
    for name, cpu_ms in result["checks_cpu_ms"].items():
        print(f"check {name:10} CPU/call {cpu_ms * 1000:.1f} us")
    print(write_result("gateway_client", result))


if __name__ == "__main__":
    main()
