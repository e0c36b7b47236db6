"""What the security pipeline of `tools` costs: the same tool on two servers, one run.

- plain: the `mcp` SDK's MCPServer with `get_weather` (the same tool code, reading the
  same Redis through the same client), streamable HTTP, no security at all;
- secured: `python -m bastion_tools` with the full pipeline (Host/Origin, ES256 token
  validated locally against a JWKS, one Lua round trip for denylist + token bucket,
  RBAC, argument validation, an audit event per call).

Both run with the same transport settings (JSON responses; stateless HTTP by default,
`--stateful` gives each connection a session of its own, as 16 clients would have, and
numbers every request; `--modern` sends the call in the 2026-07-28 protocol, which has
no handshake or session whatever the server's setting; `--tool-cpu-ms 1` makes the tool
spend 1 ms of CPU per call on both servers, a tool that does some work), as separate
processes pinned
to CPU 0; the load comes from `wrk`
(C, 16 connections) pinned to CPU 1. The token is the same for
every call, so its signature is verified once and then served from the cache, as for a
real client. The two servers are measured alternately (`--rounds`, medians kept) so that
other load on the machine falls on both alike. Output: calls/s, p50/p95/p99 and the server
process's CPU time per call and the share of its core it kept busy for each server, the
throughput ratio, and the differences
(the pipeline's own cost per call). Writes bench/results/tools_overhead.json.

    .venv/bin/python bench/tools_overhead.py [--duration 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import (
    MODERN_WEATHER_CALL,
    PYTHON,
    ROOT,
    SERVER_CPU,
    TOOL_CPU_ENV,
    WEATHER_CALL,
    Issuer,
    Processes,
    Wrk,
    check_call,
    cpu_seconds,
    free_port,
    mcp_headers,
    median,
    open_session,
    pinned,
    require,
    tool_cpu_from_env,
    tools_argv,
    tools_env,
    wait_port,
    write_result,
)

# -- the plain server (run in its own process) --------------------------------------


def plain_app(redis_url: str, stateless: bool) -> Any:
    """The plain server's ASGI app: MCPServer with `get_weather`, no security at all."""
    import logging

    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings

    from bastion_common.redis import create_redis
    from bastion_tools.tools.weather import WeatherStore

    # The client `tools` gives the same store, so that the difference between two clients
    # does not land in the pipeline's figure.
    redis = create_redis(redis_url)
    store = WeatherStore(redis)
    mcp: MCPServer[object] = MCPServer(name="plain")

    @mcp.tool()
    async def get_weather(city: str) -> dict[str, Any]:
        """Latest stored weather observation for a city."""
        return {"city": city, "observation": await store.latest(city)}

    app = mcp.streamable_http_app(
        json_response=True,
        stateless_http=stateless,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    logging.getLogger("mcp").setLevel(logging.WARNING)
    return app


def serve_plain(port: int, redis_url: str, stateless: bool) -> None:
    import contextlib

    import uvicorn

    from bastion_common.service import freeze_startup_objects

    tool_cpu_from_env()
    app = plain_app(redis_url, stateless)
    started = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        async with started(app) as state:
            # What every served bastion process does once started (a full collection,
            # then gc.freeze): without it the plain server's full collections walk the
            # whole heap, about 6% of its CPU at 16 connections, and the ratio would
            # credit the pipeline with that.
            freeze_startup_objects()
            yield state

    app.router.lifespan_context = lifespan
    # The uvicorn settings `bastion_common.service.run` gives ours: no proxy-headers
    # middleware (uvicorn's default wraps every request in it), no Server header.
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                proxy_headers=False, server_header=False)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; medians kept")
    parser.add_argument("--stateful", action="store_true", help="one session per connection")
    parser.add_argument(
        "--modern", action="store_true", help="the 2026-07-28 protocol (no session)"
    )
    parser.add_argument(
        "--together-rounds", type=int, default=5, help="runs with both servers loaded at once"
    )
    parser.add_argument(
        "--tool-cpu-ms", type=float, default=0.0,
        help="CPU the tool spends per call, on both servers (default 0: a Redis read only)",
    )  # fmt: skip
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the secured server")
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy both servers in the last round (raw stacks to DIR)"
    )
    args = parser.parse_args()
    require("wrk", "redis-server")
    if args.modern and args.stateful:
        parser.error("the 2026-07-28 protocol has no sessions: --modern excludes --stateful")
    stateless = not args.stateful
    call = MODERN_WEATHER_CALL if args.modern else WEATHER_CALL

    with Processes("tools-bench-") as procs:
        _, redis_url = procs.redis()
        plain_port, secure_port = free_port(), free_port()
        public_url = f"http://localhost:{secure_port}"
        issuer = Issuer()
        token = issuer.token(f"{public_url}/mcp")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "libs/common/src"), str(ROOT / "services/tools/src")]
            ),
            TOOL_CPU_ENV: str(args.tool_cpu_ms),
        }
        plain_proc = procs.start(
            pinned([PYTHON, __file__, "serve-plain", str(plain_port), redis_url,
                    "1" if stateless else "0"], SERVER_CPU), env=env, quiet=False)  # fmt: skip
        secure_env = tools_env(port=secure_port, public_url=public_url, redis_url=redis_url,
                               issuer=issuer, workdir=procs.workdir, stateless=stateless,
                               log_level=args.log_level)  # fmt: skip
        secure_env[TOOL_CPU_ENV] = str(args.tool_cpu_ms)
        secure_proc = procs.start(pinned(tools_argv(), SERVER_CPU), env=secure_env)
        wait_port(plain_port)
        wait_port(secure_port)

        def load(name: str, url: str, duration: float) -> Wrk:
            return Wrk(url, call, headers[name], args.connections, duration,
                       sessions=sessions[name])  # fmt: skip

        targets = {
            "plain": (f"http://127.0.0.1:{plain_port}/mcp", None, plain_proc.pid),
            "secured": (f"{public_url}/mcp", token, secure_proc.pid),
        }
        headers: dict[str, dict[str, str]] = {}
        sessions: dict[str, list[str]] = {}
        for name, (url, bearer, _pid) in targets.items():
            sessions[name] = (
                [] if stateless else [open_session(url, bearer) for _ in range(args.connections)]
            )
            check_call(url, bearer, sessions[name][0] if sessions[name] else None,
                       modern=args.modern)  # fmt: skip
            headers[name] = mcp_headers(bearer, modern=args.modern)
            load(name, url, args.warmup).run()
        # Alternate the two servers so that load from anything else on the machine
        # falls on both alike; keep the median of each figure.
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for round_no in range(args.rounds):
            for name, (url, _bearer, pid) in targets.items():
                spy = None
                if args.profile and round_no == args.rounds - 1 and shutil.which("py-spy"):
                    Path(args.profile).mkdir(parents=True, exist_ok=True)
                    spy = subprocess.Popen(
                        ["py-spy", "record", "-p", str(pid), "-d", str(args.duration), "-r", "250",
                         "-f", "raw", "-o", str(Path(args.profile) / f"{name}.txt")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                cpu_before = cpu_seconds(pid)
                run = load(name, url, args.duration).run()
                if spy is not None:
                    spy.wait(timeout=args.duration + 30)
                cpu = cpu_seconds(pid) - cpu_before
                run["server_cpu_ms_per_call"] = round(cpu * 1000 / max(1, run["requests"]), 3)
                # The share of CPU 0 the server kept busy: below 1, it had nothing to do
                # for part of the run (every call it held was waiting, on Redis say).
                run["server_busy"] = round(cpu / run["duration_s"], 3)
                runs[name].append(run)
            plain_run, secured_run = runs["plain"][-1], runs["secured"][-1]
            print(
                f"round {round_no + 1}/{args.rounds}: plain {plain_run['calls_per_s']:.0f}/s "
                f"{plain_run['server_cpu_ms_per_call']:.3f} ms cpu, secured "
                f"{secured_run['calls_per_s']:.0f}/s {secured_run['server_cpu_ms_per_call']:.3f}"
                f" ms cpu, ratio {secured_run['calls_per_s'] / plain_run['calls_per_s']:.3f}"
                f" (busy {plain_run['server_busy']:.3f} vs {secured_run['server_busy']:.3f})",
                file=sys.stderr,
            )
        # Both servers loaded at once, sharing CPU 0: the scheduler gives each half of it,
        # so each one's calls/s is set by its CPU cost per call, measured over the same
        # seconds. Whatever the host does to this VM's clock then falls on both at once.
        together: list[float] = []
        for round_no in range(args.together_rounds):
            cpu_before = {name: cpu_seconds(pid) for name, (_u, _b, pid) in targets.items()}
            started = {name: load(name, url, args.duration).start()
                       for name, (url, _b, _p) in targets.items()}  # fmt: skip
            both = {name: wrk.result() for name, wrk in started.items()}
            cpu = {
                name: (cpu_seconds(pid) - cpu_before[name]) * 1000 / max(1, both[name]["requests"])
                for name, (_u, _b, pid) in targets.items()
            }
            together.append(both["secured"]["calls_per_s"] / both["plain"]["calls_per_s"])
            print(
                f"together {round_no + 1}/{args.together_rounds}: plain "
                f"{both['plain']['calls_per_s']:.0f}/s {cpu['plain']:.3f} ms cpu, secured "
                f"{both['secured']['calls_per_s']:.0f}/s {cpu['secured']:.3f} ms cpu, "
                f"ratio {together[-1]:.3f}",
                file=sys.stderr,
            )
        issuer.close()

    results: dict[str, Any] = {
        name: {key: median([r[key] for r in rs]) for key in rs[0]} for name, rs in runs.items()
    }
    plain, secured = results["plain"], results["secured"]
    summary = {
        "connections": args.connections,
        "duration_s": args.duration,
        "mode": (
            "2026-07-28 (no session)"
            if args.modern
            else "stateless"
            if stateless
            else "stateful (one session per connection)"
        ),  # fmt: skip
        "tool_cpu_ms": args.tool_cpu_ms,
        "secured_log_level": args.log_level,
        "plain": plain,
        "secured": secured,
        "throughput_ratio": round(secured["calls_per_s"] / plain["calls_per_s"], 3),
        # Each round's two runs are seconds apart; the median of their ratios is
        # less moved by the machine's drift than the ratio of the two medians.
        "throughput_ratio_paired": round(
            median(
                s["calls_per_s"] / p["calls_per_s"] for p, s in zip(*runs.values(), strict=True)
            ),
            3,
        ),
        "throughput_ratio_range": [
            round(
                f(s["calls_per_s"] / p["calls_per_s"] for p, s in zip(*runs.values(), strict=True)),
                3,
            )
            for f in (min, max)
        ],  # fmt: skip
        "throughput_ratio_together": round(median(together), 3) if together else None,
        "together_rounds": len(together),
        "pipeline_p50_ms": round(secured["p50_ms"] - plain["p50_ms"], 3),
        "pipeline_p95_ms": round(secured["p95_ms"] - plain["p95_ms"], 3),
        "pipeline_p99_ms": round(secured["p99_ms"] - plain["p99_ms"], 3),
        "pipeline_cpu_ms_per_call": round(
            secured["server_cpu_ms_per_call"] - plain["server_cpu_ms_per_call"], 3
        ),
        "rounds": args.rounds,
    }
    print(json.dumps(summary, indent=2))
    name = "tools_overhead" + ("_modern" if args.modern else "" if stateless else "_stateful")
    if args.tool_cpu_ms:
        name += f"_cpu{args.tool_cpu_ms:g}"
    name += f"_c{args.connections}"
    write_result(name, summary)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve-plain":
        serve_plain(int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1")
    else:
        main()
