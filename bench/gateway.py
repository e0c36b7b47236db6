"""What the gateway adds to a call: the same upstream, the same client, one run.

- direct: the client calls the upstream (`bench/gateway_upstream.py`, the `mcp` SDK's
  MCPServer with a no-op `echo` tool, stateless, JSON) itself, no token;
- gateway: the client calls `up_echo` on `python -m bastion_tools` with the upstream in
  its policy file: the whole pipeline (token, one Redis round trip, RBAC, arguments
  checked against the pinned schema, audit), the forwarded call on the gateway's own
  session, the result checked and redacted;
- builtin: the client calls the built-in `get_weather` on the same tools process, to
  compare the CPU tools spends per forwarded call with its CPU per built-in call.

One connection, calls one after another (latency is what one user waits for), rounds
alternating between the three (`--rounds`, medians kept) so that other load falls on all
alike. Servers on CPU 0, the client and Redis on CPU 1. Reports p50/p99 per side, the
gateway's added p50, and tools' CPU time per call (gateway vs builtin). Writes
bench/results/gateway.json.

`--memory`: instead, the resident memory of a tools process with 10 upstreams of 50
tools each (500 pinned definitions, all listed and served), against the same process
with no upstream. Writes bench/results/gateway_memory.json.

`--peers`: two more sides in the same rounds, FastMCP's `create_proxy` with its
`JWTVerifier` and IBM ContextForge, in front of the same upstream (bench/gateway_peers.py,
each in its own virtualenv under bench/.peers/); calls/s and added p50 are compared.
Ports come from `--port-base` (19850) up.

    .venv/bin/python bench/gateway.py [--calls 2000] [--rounds 3] [--memory] [--peers]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
from harness import (
    LOAD_CPU,
    PYTHON,
    ROOT,
    SERVER_CPU,
    WEATHER_CALL,
    Issuer,
    Processes,
    cpu_seconds,
    mcp_headers,
    median,
    pin_self,
    pinned,
    tools_argv,
    tools_env,
    wait_port,
    write_result,
)


def call(name: str) -> bytes:
    arguments = {"message": "hello"} if name.endswith("echo") else {"city": "Paris"}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    return json.dumps(body).encode()


def measure(
    http: httpx2.Client, url: str, body: bytes, headers: dict[str, str], n: int
) -> list[float]:
    """Latency in ms of `n` calls, one after another, each checked."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        reply = http.post(url, content=body, headers=headers)
        out.append((time.perf_counter() - started) * 1000)
        if (
            reply.status_code != 200
            or "error" in reply.json()
            or reply.json()["result"].get("isError")
        ):
            raise RuntimeError(f"the bench call failed: {reply.status_code} {reply.text[:200]}")
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def memory(port: Callable[[], int]) -> None:
    """RSS of tools serving 10 upstreams x 50 tools, and of tools with none."""
    issuer = Issuer()
    out: dict[str, Any] = {}
    with Processes("bench-gateway-memory-") as procs:
        _, redis_url = procs.redis()
        up_port = port()
        upstream = [PYTHON, str(ROOT / "bench" / "gateway_upstream.py"), str(up_port)]
        procs.start([*upstream, "--tools", "49"])
        wait_port(up_port)
        lines = "".join(
            f"  u{i}: {{url: 'http://127.0.0.1:{up_port}/mcp', permissions: {{read: weather:read,"
            " write: weather:read}}\n"
            for i in range(10)
        )
        policy = procs.workdir / "policy.yaml"
        policy.write_text("mcpServers:\n" + lines)
        for label, with_policy in (("no upstream", False), ("10 upstreams, 500 tools", True)):
            tools_port = port()
            public = f"http://127.0.0.1:{tools_port}"
            env = tools_env(port=tools_port, public_url=public, redis_url=redis_url,
                            issuer=issuer, workdir=procs.workdir)  # fmt: skip
            if with_policy:
                env["TOOLS_POLICY_FILE"] = str(policy)
            tools = procs.start(tools_argv(), env=env)
            wait_port(tools_port)
            token = issuer.token(f"{public}/mcp")
            listing = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            with httpx2.Client(timeout=30) as http:
                deadline = time.monotonic() + 60
                while True:
                    reply = http.post(f"{public}/mcp", content=listing, headers=mcp_headers(token))
                    listed = len(reply.json()["result"]["tools"])
                    if not with_policy or listed >= 500 or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                for _ in range(200):  # some traffic, so caches and pools are in use
                    http.post(f"{public}/mcp", content=listing, headers=mcp_headers(token))
                    if with_policy:
                        measure(http, f"{public}/mcp", call("u3_echo"), mcp_headers(token), 1)
            out[label] = {"rss_mb": round(rss_mb(tools.pid), 1), "tools_listed": listed}
            tools.terminate()
            tools.wait(timeout=20)
    issuer.close()
    path = write_result("gateway_memory", out)
    for label, row in out.items():
        print(f"{label:24} RSS {row['rss_mb']:.1f} MB, {row['tools_listed']} tools listed")
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--peers", action="store_true", help="FastMCP's proxy and ContextForge too")
    parser.add_argument("--port-base", type=int, default=19850, help="ports from here up")
    args = parser.parse_args()
    ports = iter(range(args.port_base, args.port_base + 50))
    if args.memory:
        memory(lambda: next(ports))
        return
    pin_self(LOAD_CPU)
    issuer = Issuer()
    found: dict[str, Any] = {}
    with Processes("bench-gateway-") as procs:
        _, redis_url = procs.redis()
        up_port, tools_port = next(ports), next(ports)
        procs.start(
            pinned([PYTHON, str(ROOT / "bench" / "gateway_upstream.py"), str(up_port)], SERVER_CPU)
        )
        wait_port(up_port)
        upstream_url = f"http://127.0.0.1:{up_port}/mcp"
        policy = procs.workdir / "policy.yaml"
        policy.write_text(
            "mcpServers:\n"
            f"  up: {{url: '{upstream_url}', permissions: {{read: weather:read}},"
            " timeout_seconds: 10, max_concurrency: 64}\n"
        )
        public = f"http://127.0.0.1:{tools_port}"
        env = tools_env(
            port=tools_port,
            public_url=public,
            redis_url=redis_url,
            issuer=issuer,
            workdir=procs.workdir,
        )
        env["TOOLS_POLICY_FILE"] = str(policy)
        tools = procs.start(pinned(tools_argv(), SERVER_CPU), env=env)
        wait_port(tools_port)
        token = issuer.token(f"{public}/mcp")
        sides: dict[str, tuple[str, bytes, dict[str, str]]] = {
            "direct": (upstream_url, call("echo"), mcp_headers()),
            "gateway": (f"{public}/mcp", call("up_echo"), mcp_headers(token)),
            "builtin": (f"{public}/mcp", WEATHER_CALL.encode(), mcp_headers(token)),
        }
        pids = {"gateway": tools.pid, "builtin": tools.pid}
        if args.peers:
            from gateway_peers import ENFORCES, refused_without_token, start_peers

            peer_sides, peer_pids, found = start_peers(
                procs, issuer, upstream_url, lambda: next(ports), call
            )
            sides |= peer_sides
            pids |= peer_pids
            for name in ("gateway", *peer_sides):
                refused_without_token(*sides[name])
            for name in ("bastion", *peer_sides):
                print(f"{name}: {found.get(name, '')}\n  enforces: {ENFORCES[name]}")
            print("each gateway refuses the call without a token (401)")
        rounds = run_rounds(sides, pids, args.calls, args.rounds)
    issuer.close()
    report(rounds, args.calls, found)


def run_rounds(
    sides: dict[str, tuple[str, bytes, dict[str, str]]],
    pids: dict[str, int],
    calls: int,
    count: int,
) -> dict[str, list[dict[str, float]]]:
    """`count` rounds of `calls` calls on each side in turn: p50, p99, calls/s at one
    connection, and the CPU per call of the process that serves the side."""
    rounds: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    with httpx2.Client(timeout=30) as http:
        for url, body, headers in sides.values():
            measure(http, url, body, headers, 200)  # warm-up: caches, pools, first listings
        for _ in range(count):
            for side, (url, body, headers) in sides.items():
                pid = pids.get(side)
                before = cpu_seconds(pid) if pid else 0.0
                latencies = measure(http, url, body, headers, calls)
                cpu_ms = (cpu_seconds(pid) - before) * 1000 / calls if pid else 0.0
                rounds[side].append(
                    {
                        "p50": statistics.median(latencies),
                        "p99": pct(latencies, 99),
                        "calls_per_s": 1000 * len(latencies) / sum(latencies),
                        "server_cpu_ms": cpu_ms,
                    }
                )
    return rounds


def report(rounds: dict[str, list[dict[str, float]]], calls: int, found: dict[str, Any]) -> None:
    keys = ("p50", "p99", "calls_per_s", "server_cpu_ms")
    summary: dict[str, Any] = {
        side: {key: median(r[key] for r in runs) for key in keys} | {
            "p50_spread": [min(r["p50"] for r in runs), max(r["p50"] for r in runs)]
        }
        for side, runs in rounds.items()
    }  # fmt: skip
    for side, runs in rounds.items():
        if side not in ("direct", "builtin"):
            # Paired: this side's p50 less the direct p50 of the same round, so that
            # the VM's drift between rounds falls on both.
            added = [r["p50"] - d["p50"] for r, d in zip(runs, rounds["direct"], strict=True)]
            summary[side]["added_p50_ms"] = median(added)
            summary[side]["added_p50_spread"] = [min(added), max(added)]
    summary["cpu_ratio_gateway_vs_builtin"] = (
        summary["gateway"]["server_cpu_ms"] / summary["builtin"]["server_cpu_ms"]
    )
    result = {"calls_per_round": calls, "rounds": rounds, "summary": summary, "versions": found}
    path = write_result("gateway", result)
    for side in rounds:
        s = summary[side]
        low, high = s["p50_spread"]
        added = f"  added p50 {s['added_p50_ms']:.3f} ms" if "added_p50_ms" in s else ""
        print(
            f"{side:14} p50 {s['p50']:.3f} ms ({low:.3f}-{high:.3f})  p99 {s['p99']:.3f} ms"
            f"  {s['calls_per_s']:.0f} calls/s  server CPU/call {s['server_cpu_ms']:.3f} ms{added}"
        )
    gw = summary["gateway"]
    for peer in (side for side in rounds if side not in ("direct", "gateway", "builtin")):
        p = summary[peer]
        print(
            f"vs {peer}: calls/s {gw['calls_per_s'] / p['calls_per_s']:.2f}x, added p50"
            f" {gw['added_p50_ms'] / p['added_p50_ms']:.2f} of its"
        )
    print(
        f"tools CPU per forwarded call {summary['cpu_ratio_gateway_vs_builtin']:.2f}x a built-in"
        f" call; {path}"
    )


if __name__ == "__main__":
    main()
