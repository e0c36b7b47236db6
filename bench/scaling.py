"""Scaling: the tool-call benchmark against 1 and 2 `tools` replicas sharing one Redis.

Two `python -m bastion_tools` processes on two ports, one redis-server (CPU 1), one
stand-in issuer; both replicas name the same public URL, so one token is good at both,
as behind a load balancer. The load is `wrk` (get_weather, stateless HTTP, the same
token on every call):

- 1 replica: one wrk with `--connections` connections against replica A;
- 2 replicas: two wrk processes at the same time, half the connections each, one per
  replica; their latencies are merged (percentile grids weighted by requests).

Both replicas are pinned to CPU 0 and wrk to CPU 1: this machine has two cores, so a
second replica cannot add CPU and total calls/s cannot grow. What the run shows is
whether the cost per call stays flat when the work is split over two processes sharing
Redis (server CPU ms per call, summed over replicas) and what splitting does to latency.

Limits across replicas: a principal with a small bucket (role `user`: `--capacity`,
`--refill`/s via TOOLS_RATE_LIMITS) is hammered through both replicas at once for
`--limit-duration` s. The 200s are counted by the servers themselves (their Prometheus
counters, before and after) and compared with capacity + refill x the window (from just
before wrk starts to the last decision's time kept in the bucket by Redis).

Writes bench/results/scaling.json.

    .venv/bin/python bench/scaling.py [--duration 10] [--connections 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx2
import redis
from harness import (
    PYTHON,
    SERVER_CPU,
    WEATHER_CALL,
    Issuer,
    Processes,
    Wrk,
    check_call,
    cpu_seconds,
    free_port,
    mcp_headers,
    median,
    merge_latency,
    pinned,
    require,
    tools_env,
    wait_port,
    write_result,
)

from bastion_tools.store import principal_bucket_key

NOTE = (
    "2 cores: both replicas share CPU 0 (wrk and Redis on CPU 1), so total calls/s cannot "
    "grow with a second replica here; what this run shows is whether the CPU cost per call "
    "stays flat and whether the limits stay exact across replicas."
)
_OK_POSTS = re.compile(
    r'^bastion_http_requests_total\{[^}]*method="POST"[^}]*status="200"[^}]*\}\s+(\S+)$', re.M
)


def ok_posts(port: int) -> int:
    """POSTs answered 200 by one replica so far (its own Prometheus counter), once the
    replica has finished what earlier load left behind: wrk abandons the calls in flight
    at its deadline, and the server still answers (and counts) them."""

    def read() -> int:
        text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return int(sum(float(value) for value in _OK_POSTS.findall(text)))

    previous, current = -1, read()
    while current != previous:
        time.sleep(0.5)
        previous, current = current, read()
    return current


def combine(runs: Sequence[dict[str, Any]], cpu_s: float) -> dict[str, Any]:
    """Several wrk runs at the same time, as one: calls/s summed, latencies merged."""
    requests = sum(run["requests"] for run in runs)
    p50, p95, p99 = merge_latency(runs, [50, 95, 99])
    return {
        "calls_per_s": round(sum(run["calls_per_s"] for run in runs), 1),
        "requests": requests,
        "errors": sum(run["errors"] for run in runs),
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "server_cpu_ms_per_call": round(cpu_s * 1000 / max(1, requests), 3),
        "calls_per_s_by_replica": [run["calls_per_s"] for run in runs],
    }


Runs = list[dict[str, Any]]


def medians(runs: Runs) -> dict[str, Any]:
    """Each figure's median over the rounds (lists: the last round's)."""
    return {
        key: runs[-1][key] if isinstance(runs[0][key], list) else median(r[key] for r in runs)
        for key in runs[0]
    }


def load(urls: Sequence[str], headers: dict[str, str], connections: int, duration: float,
         pids: Sequence[int], **wrk: Any) -> tuple[dict[str, Any], Runs]:  # fmt: skip
    """`connections` split evenly over `urls`, one wrk each, all at once."""
    cpu_before = [cpu_seconds(pid) for pid in pids]
    share = max(1, connections // len(urls))
    started = [
        Wrk(url, WEATHER_CALL, headers, share, duration, quantiles=True, **wrk).start()
        for url in urls
    ]
    runs = [w.result() for w in started]
    cpu = sum(cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True))
    return combine(runs, cpu), runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; medians kept")
    parser.add_argument("--limit-duration", type=int, default=10)
    parser.add_argument("--capacity", type=int, default=50, help="bucket of the limits check")
    parser.add_argument("--refill", type=float, default=20.0, help="tokens/s, limits check")
    args = parser.parse_args()
    require("wrk", "redis-server")

    with Processes("scaling-bench-") as procs:
        _, redis_url = procs.redis()
        issuer = Issuer()
        ports = [free_port(), free_port()]
        public_url = f"http://localhost:{ports[0]}"
        limits = {"admin": (10**9, 10**6), "user": (args.capacity, args.refill)}
        pids = [
            procs.start(
                pinned([PYTHON, "-m", "bastion_tools"], SERVER_CPU),
                env=tools_env(
                    port=port,
                    public_url=public_url,
                    redis_url=redis_url,
                    issuer=issuer,
                    workdir=procs.workdir,
                    rate_limits=limits,
                ),
            ).pid  # fmt: skip
            for port in ports
        ]
        for port in ports:
            wait_port(port)
        urls = [f"http://localhost:{port}/mcp" for port in ports]
        headers = mcp_headers(issuer.token(f"{public_url}/mcp"))
        for url in urls:
            check_call(url, issuer.token(f"{public_url}/mcp"))
        load(urls, headers, args.connections, args.warmup, pids)

        runs: dict[str, list[dict[str, Any]]] = {"1 replica": [], "2 replicas": []}
        # Alternate which goes first, so a change in other load falls on both alike.
        for round_no in range(args.rounds):
            for n in (1, 2) if round_no % 2 == 0 else (2, 1):
                runs["1 replica" if n == 1 else "2 replicas"].append(
                    load(urls[:n], headers, args.connections, args.duration, pids[:n])[0]
                )
        results = {name: medians(rs) for name, rs in runs.items()}
        for name, r in results.items():
            print(
                f"{name:10s} {r['calls_per_s']:7.1f} calls/s  p50/p95/p99 {r['p50_ms']:.2f}/"
                f"{r['p95_ms']:.2f}/{r['p99_ms']:.2f} ms  server CPU "
                f"{r['server_cpu_ms_per_call']} ms/call  errors {r['errors']}"
            )

        # Limits across replicas: a fresh principal, so its bucket starts full.
        subject = f"bench-limit-{uuid.uuid4().hex[:8]}"
        limited = mcp_headers(issuer.token(f"{public_url}/mcp", sub=subject, roles=["user"]))
        before = [ok_posts(port) for port in ports]
        started_at = time.time()
        _, limit_runs = load(urls, limited, args.connections, args.limit_duration, pids,
                             statuses=True)  # fmt: skip
        served = [ok_posts(port) - b for port, b in zip(ports, before, strict=True)]
        with redis.Redis.from_url(redis_url) as client:
            last_decision = float(client.hget(principal_bucket_key(subject), "ts") or 0)
        issuer.close()

    window = last_decision - started_at
    bound = args.capacity + args.refill * window
    allowed = sum(served)
    statuses: dict[str, int] = {}
    for run in limit_runs:
        for status, n in run["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    limits_check = {
        "capacity": args.capacity,
        "refill_per_s": args.refill,
        "connections": args.connections,
        "window_s": round(window, 3),
        "allowed_200": allowed,
        "allowed_by_replica": served,
        "wrk_statuses": statuses,
        "bound": round(bound, 2),
        "excess": round(allowed - bound, 2),
        # Both replicas must have granted calls, the bucket must have been drained, and
        # together they must not have granted more than the one bucket holds.
        "exact": args.capacity <= allowed <= bound and min(served) > 0,
    }
    print(
        f"limits across 2 replicas, {window:.2f} s: {allowed} calls answered 200 "
        f"({' + '.join(map(str, served))}), bound {args.capacity} + {args.refill:g} x "
        f"{window:.2f} = {bound:.1f}: {'exact' if limits_check['exact'] else 'NOT EXACT'}"
    )
    print(NOTE)
    one, two = results["1 replica"], results["2 replicas"]
    summary = {
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "replicas": results,
        "cpu_per_call_ratio": round(
            two["server_cpu_ms_per_call"] / one["server_cpu_ms_per_call"], 3
        ),
        "limits": limits_check,
        "note": NOTE,
    }
    write_result("scaling", summary)


if __name__ == "__main__":
    main()
