"""The rate limiter: decisions per second against one Redis, and the exactness bound.

`bastion_tools.ratelimit.RateLimiter.take` is the tools server's one Redis round trip
per call (denylist check + token bucket, one Lua script). Here it runs alone, without
HTTP, against a private redis-server pinned to CPU 1:

- throughput: N asyncio tasks in one worker process (pinned to CPU 0) call `take` in a
  loop, each on its own principal's bucket (never empty) and with a denylist key, as a
  real call does. Levels 1, 16 and 64 tasks, and 2 processes x 64 tasks (one per core,
  the second sharing CPU 1 with Redis). Per level: decisions/s, p50/p95/p99 of one
  `take`, the client's and redis-server's CPU per decision and how busy Redis was;
- exactness: 64 clients take from ONE principal's bucket (small capacity and refill) as
  fast as they can for `--exact-duration` s, in one process and spread over two. The
  token bucket promises allowed <= capacity + refill x window, where the window runs
  from the first call sent (no decision can be earlier) to the last decision, whose
  Redis time the bucket itself keeps (`ts`); both clocks are this machine's.

Writes bench/results/ratelimit.json.

    .venv/bin/python bench/ratelimit.py [--duration 5] [--exact-duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

from harness import (
    LOAD_CPU,
    PYTHON,
    QUANTILE_GRID,
    SERVER_CPU,
    Processes,
    cpu_seconds,
    merge_latency,
    pinned,
    require,
    write_result,
)

from bastion_common.tokens import denylist_key
from bastion_tools.ratelimit import RateLimiter
from bastion_tools.store import principal_bucket_key

# Levels of the throughput run: (processes, tasks per process).
LEVELS = [(1, 1), (1, 16), (1, 64), (2, 64)]
WARMUP = 1.0  # seconds between all workers ready and the window's start


def quantiles(values: list[float]) -> list[float]:
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] for q in QUANTILE_GRID]


async def hammer(
    limiter: RateLimiter,
    tasks: int,
    start_at: float,
    duration: float,
    *,
    shared_bucket: str | None,
    capacity: int,
    refill: float,
) -> dict[str, Any]:
    """`tasks` loops of `take` from `start_at` (wall clock) for `duration` seconds.

    Without `shared_bucket`, each task has its own bucket and warms up before `start_at`
    (its decisions before then are not counted); with one, all tasks take from it and
    nothing happens before `start_at`, so every token spent is counted.
    """
    revoked = denylist_key(uuid.uuid4().hex)  # checked on every call, never present
    latencies: list[float] = []
    allowed = refused = 0
    first_sent = last_done = cpu_start = 0.0
    end = start_at + duration

    async def client(n: int) -> None:
        nonlocal allowed, refused, first_sent, last_done, cpu_start
        key = shared_bucket or principal_bucket_key(f"bench-{uuid.uuid4().hex[:8]}-{n}")
        while shared_bucket is None and time.time() < start_at:  # warm-up, not counted
            await limiter.take(key, capacity=capacity, refill_per_second=refill,
                               denylist_key=revoked)  # fmt: skip
        await asyncio.sleep(max(0.0, start_at - time.time()))
        if not first_sent:
            first_sent, cpu_start = time.time(), time.process_time()
        while True:
            began = time.perf_counter()
            decision = await limiter.take(key, capacity=capacity, refill_per_second=refill,
                                          denylist_key=revoked)  # fmt: skip
            latencies.append(time.perf_counter() - began)
            if decision.allowed:
                allowed += 1
            else:
                refused += 1
            last_done = time.time()
            if last_done >= end:
                return

    await asyncio.gather(*(client(n) for n in range(tasks)))
    cpu = time.process_time() - cpu_start
    return {
        "decisions": len(latencies),
        "allowed": allowed,
        "refused": refused,
        "first_sent": first_sent,
        "last_done": last_done,
        "client_cpu_s": cpu,
        "quantiles_ms": [v * 1000 for v in quantiles(latencies)],
    }


def run_workers(
    procs: Processes,
    redis_url: str,
    processes: int,
    tasks: int,
    duration: float,
    *,
    shared_bucket: str | None = None,
    capacity: int = 10**9,
    refill: float = 10**6,
    redis_pid: int,
) -> dict[str, Any]:
    """`processes` workers (CPU 0, then CPU 1) on one window; their results merged.

    Each worker imports and connects, says `ready`, and is then told when the window
    starts (WARMUP s later), so slow start-up never shortens a window.
    """
    spec = json.dumps({"redis_url": redis_url, "tasks": tasks, "duration": duration,
                       "shared_bucket": shared_bucket, "capacity": capacity,
                       "refill": refill})  # fmt: skip
    cpus = [SERVER_CPU, LOAD_CPU]
    workers = [
        subprocess.Popen(
            pinned([PYTHON, __file__, "worker", spec], cpus[i % 2]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(processes)
    ]
    procs.procs.extend(workers)  # stopped with the rest if this run fails
    for proc in workers:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    start_at = time.time() + WARMUP
    for proc in workers:
        assert proc.stdin is not None
        proc.stdin.write(f"{start_at}\n")
        proc.stdin.close()
    time.sleep(max(0.0, start_at - time.time()))
    redis_before = cpu_seconds(redis_pid)
    time.sleep(max(0.0, start_at + duration - time.time()))
    redis_cpu = cpu_seconds(redis_pid) - redis_before
    results = []
    for proc in workers:
        assert proc.stdout is not None
        out = proc.stdout.read()
        if proc.wait(timeout=60) != 0:
            raise RuntimeError("a rate-limit worker failed")
        results.append(json.loads(out))
    decisions = sum(r["decisions"] for r in results)
    elapsed = max(r["last_done"] for r in results) - min(r["first_sent"] for r in results)
    p50, p95, p99 = merge_latency(
        [{"requests": r["decisions"], "quantiles_ms": r["quantiles_ms"]} for r in results],
        [50, 95, 99],
    )
    return {
        "processes": processes,
        "tasks_per_process": tasks,
        "decisions": decisions,
        "allowed": sum(r["allowed"] for r in results),
        "refused": sum(r["refused"] for r in results),
        "elapsed_s": round(elapsed, 3),
        "first_sent": min(r["first_sent"] for r in results),
        "decisions_per_s": round(decisions / elapsed),
        "p50_ms": round(p50, 3),
        "p95_ms": round(p95, 3),
        "p99_ms": round(p99, 3),
        "client_cpu_us_per_decision": round(
            sum(r["client_cpu_s"] for r in results) * 1e6 / max(1, decisions), 1
        ),
        "redis_cpu_us_per_decision": round(redis_cpu * 1e6 / max(1, decisions), 1),
        "redis_busy": round(redis_cpu / duration, 2),
    }


def worker(spec_json: str) -> None:
    """Child process: connect, say ready, read the window's start, hammer, print JSON."""
    spec = json.loads(spec_json)

    async def go() -> dict[str, Any]:
        from bastion_common.redis import create_redis
        from bastion_tools.ratelimit import RateLimiter

        redis = create_redis(spec["redis_url"])
        try:
            # One connection per task opened now, not inside the measured window.
            await asyncio.gather(*(redis.ping() for _ in range(spec["tasks"])))
            print("ready", flush=True)
            start_at = float(await asyncio.to_thread(sys.stdin.readline))
            limiter = RateLimiter(redis)
            try:
                return await hammer(limiter, spec["tasks"], start_at, spec["duration"],
                                    shared_bucket=spec["shared_bucket"],
                                    capacity=spec["capacity"], refill=spec["refill"])  # fmt: skip
            finally:
                await limiter.aclose()
        finally:
            await redis.aclose()

    print(json.dumps(asyncio.run(go())))


def exactness_check(
    procs: Processes, redis_url: str, redis_pid: int, processes: int, args: argparse.Namespace
) -> dict[str, Any]:
    """`args.clients` clients over `processes` processes on one small bucket."""
    import redis

    bucket = principal_bucket_key(f"bench-exact-{uuid.uuid4().hex[:8]}")
    run = run_workers(procs, redis_url, processes, args.clients // processes,
                      args.exact_duration, shared_bucket=bucket, capacity=args.capacity,
                      refill=args.refill, redis_pid=redis_pid)  # fmt: skip
    # The window the script saw: from no earlier than the first call sent to the last
    # decision, whose Redis time the bucket keeps (`ts`). Both clocks are this machine's.
    with redis.Redis.from_url(redis_url) as client:
        last_decision = float(client.hget(bucket, "ts") or 0)
    window = last_decision - run["first_sent"]
    bound = args.capacity + args.refill * window
    check = {
        "clients": args.clients,
        "processes": processes,
        "capacity": args.capacity,
        "refill_per_s": args.refill,
        "window_s": round(window, 4),
        "decisions": run["decisions"],
        "allowed": run["allowed"],
        "refused": run["refused"],
        "bound": round(bound, 2),
        "excess": round(run["allowed"] - bound, 2),
        # The bucket starts full and is drained at once, so allowed should come close to
        # the bound from below; anything above it is a leak.
        "exact": args.capacity <= run["allowed"] <= bound,
    }
    print(
        f"exactness, {args.clients} clients in {processes} process(es), {window:.3f} s: "
        f"allowed {check['allowed']} of {check['decisions']}, bound {args.capacity} + "
        f"{args.refill:g} x {window:.3f} = {bound:.2f}: "
        f"{'exact' if check['exact'] else 'NOT EXACT'}"
    )
    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5, help="seconds per throughput level")
    parser.add_argument("--exact-duration", type=float, default=10)
    parser.add_argument("--clients", type=int, default=64, help="clients on the one bucket")
    parser.add_argument("--capacity", type=int, default=100)
    parser.add_argument("--refill", type=float, default=50.0, help="tokens per second")
    args = parser.parse_args()
    require("redis-server")

    with Processes("ratelimit-bench-") as procs:
        redis_pid, redis_url = procs.redis()
        throughput = []
        for processes, tasks in LEVELS:
            level = run_workers(procs, redis_url, processes, tasks, args.duration,
                                redis_pid=redis_pid)  # fmt: skip
            for key in ("allowed", "refused"):
                level.pop(key)
            throughput.append(level)
            print(
                f"{processes} x {tasks:2d} tasks: {level['decisions_per_s']:7d} decisions/s  "
                f"p50/p95/p99 {level['p50_ms']:.3f}/{level['p95_ms']:.3f}/{level['p99_ms']:.3f}"
                f" ms  client {level['client_cpu_us_per_decision']} us, redis "
                f"{level['redis_cpu_us_per_decision']} us CPU/decision (redis busy "
                f"{level['redis_busy']:.0%})"
            )
        exactness = [
            exactness_check(procs, redis_url, redis_pid, processes, args) for processes in (1, 2)
        ]
    summary = {
        "throughput": throughput,
        "exactness": exactness,
        "exact": all(check["exact"] for check in exactness),
        "note": "workers on CPU 0 (a second one on CPU 1), redis-server on CPU 1; "
        "each take = one EVALSHA (denylist EXISTS + bucket), pipelined per loop turn",
    }
    print(f"written {write_result('ratelimit', summary)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2])
    else:
        main()
