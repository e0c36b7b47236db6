"""Audit pipeline throughput and lag: publish (AuditPublisher) -> Redis stream ->
collector (`python -m bastion_audit`, a separate process) -> SQLite hash chain.

A redis-server with AOF on (as deployed) and the collector run as their own processes;
this process publishes and watches the store.

- backlog: N events already in the stream, then the collector starts: stored events/s
  of the collector alone (validate, re-redact, hash-chain, commit, ack);
- burst: N events published as fast as `emit` takes them while the collector runs:
  events/s from the first publish to the last event stored;
- steady: R events/s (default 2,000) for D seconds, paced every 10 ms; the lag of each
  event = when it was seen in the store (polled every 5 ms) - its creation time.
  Reported as p50 / p99 / max.

Writes bench/results/audit_pipeline.json.

    .venv/bin/python bench/audit_pipeline.py [--events 50000] [--rate 2000] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import sys
import threading
import time
from typing import Any

from harness import Processes, free_port, write_result

from bastion_common.audit import AUDIT_STREAM, AuditEvent, batch_fields
from bastion_common.publisher import AuditPublisher
from bastion_common.redis import create_redis


def make_event(n: int) -> str:
    return AuditEvent.trusted_json(
        "tool.called", "bench", "success", principal=f"user{n % 50}", ip=f"10.0.{n % 7}.1",
        tool="get_weather", details={"n": n, "latency_ms": 1.5, "arguments": {"city": "Paris"}},
    )  # fmt: skip


class Pipeline:
    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.workdir = procs.workdir
        self.db = procs.workdir / "audit.sqlite3"
        self.redis_url = ""
        self._reader: sqlite3.Connection | None = None
        self._count = 0
        self._counted_to = 0

    def start_redis(self) -> None:
        # AOF on, as deployed; not pinned (publisher, Redis and collector share both cores).
        _, self.redis_url = self.procs.redis(cpu=None, appendonly=True)

    def start_collector(self) -> None:
        env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "PORT": str(free_port()),
            "AUDIT_CHECKPOINT_KEY": secrets.token_urlsafe(40),
            "AUDIT_DB_PATH": str(self.db),
            "AUDIT_CONSUMER_NAME": "bench",
            "BASTION_SPOOL_DIR": str(self.workdir / "spool"),
            "LOG_LEVEL": "WARNING",
        }
        self.procs.start([sys.executable, "-m", "bastion_audit"], env=env)

    def stored(self) -> int:
        """Bench events stored so far, counted incrementally (a full COUNT(*) every few
        milliseconds would steal the collector's CPU and skew the numbers)."""
        try:
            if self._reader is None:
                self._reader = sqlite3.connect(
                    f"file:{self.db}?mode=ro", uri=True, timeout=5, check_same_thread=False
                )
            (top,) = self._reader.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            (more,) = self._reader.execute(
                "SELECT COUNT(*) FROM events WHERE seq > ? AND seq <= ? AND service = 'bench'",
                (self._counted_to, top),
            ).fetchone()
        except sqlite3.OperationalError:
            return 0
        self._count += int(more)
        self._counted_to = int(top)
        return self._count

    def wait_stored(self, n: int, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while self.stored() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.stored()} of {n} events stored")
            time.sleep(0.01)
        return time.perf_counter()


async def backlog(pipeline: Pipeline, n: int) -> dict[str, Any]:
    redis = create_redis(pipeline.redis_url)
    try:
        for start in range(0, n, 1000):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(n, start + 1000)):
                    pipe.xadd(AUDIT_STREAM, batch_fields([make_event(i)]))  # type: ignore[arg-type]
                await pipe.execute()
    finally:
        await redis.aclose()
    pipeline.start_collector()
    while pipeline.stored() == 0:  # start-up (imports, SQLite) is not collector work
        await asyncio.sleep(0.005)
    first = time.perf_counter()
    start_count = pipeline.stored()
    done = await asyncio.to_thread(pipeline.wait_stored, n)
    return {"events": n - start_count, "seconds": round(done - first, 3),
            "events_per_s": round((n - start_count) / (done - first))}  # fmt: skip


async def burst(pipeline: Pipeline, n: int, offset: int) -> dict[str, Any]:
    redis = create_redis(pipeline.redis_url)
    publisher = AuditPublisher(redis, pipeline.workdir / "bench-spool.jsonl", batch_size=512)
    await publisher.start()
    events = [make_event(offset + i) for i in range(n)]
    try:
        t0 = time.perf_counter()
        for i, e in enumerate(events):
            publisher.emit(e)
            if i % 500 == 0:
                await asyncio.sleep(0)  # let the flusher run, as a busy service would
        await publisher.drain()
        published = time.perf_counter()
        done = await asyncio.to_thread(pipeline.wait_stored, offset + n)
    finally:
        await publisher.close()
        await redis.aclose()
    return {"events": n, "publish_seconds": round(published - t0, 3),
            "seconds": round(done - t0, 3), "events_per_s": round(n / (done - t0))}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def steady(pipeline: Pipeline, rate: int, duration: float) -> dict[str, Any]:
    redis = create_redis(pipeline.redis_url)
    publisher = AuditPublisher(redis, pipeline.workdir / "steady-spool.jsonl", batch_size=512)
    await publisher.start()
    created: dict[int, float] = {}
    lags: list[float] = []
    stop = threading.Event()
    with sqlite3.connect(f"file:{pipeline.db}?mode=ro", uri=True) as db:
        (last_seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()

    def watch() -> None:
        seq = last_seq
        with sqlite3.connect(f"file:{pipeline.db}?mode=ro", uri=True) as db:
            while not (stop.is_set() and len(lags) >= len(created)):
                rows = db.execute(
                    "SELECT seq, service, json_extract(body, '$.details.n') FROM events"
                    " WHERE seq > ? ORDER BY seq",
                    (seq,),
                ).fetchall()
                now = time.time()
                for s, service, n in rows:
                    seq = s
                    if service == "bench" and n in created:
                        lags.append(now - created[n])
                time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    per_tick = max(1, rate // 100)
    n = 10_000_000
    t0 = time.perf_counter()
    tick = 0
    try:
        while time.perf_counter() - t0 < duration:
            for _ in range(per_tick):
                e = make_event(n)
                created[n] = e.time.timestamp()
                publisher.emit(e)
                n += 1
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * 0.01 - time.perf_counter()))
        await publisher.drain()
        elapsed = time.perf_counter() - t0
        stop.set()
        await asyncio.to_thread(watcher.join, 30)
    finally:
        await publisher.close()
        await redis.aclose()
    return {
        "target_rate": rate,
        "achieved_rate": round(len(created) / elapsed),
        "events": len(created),
        "seen": len(lags),
        "lag_ms": {
            "p50": round(percentile(lags, 0.50) * 1000, 1),
            "p99": round(percentile(lags, 0.99) * 1000, 1),
            "max": round(max(lags) * 1000, 1),
        },
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with Processes("audit-bench-") as procs:
        pipeline = Pipeline(procs)
        pipeline.start_redis()
        result: dict[str, Any] = {"backlog": await backlog(pipeline, args.events)}
        result["burst"] = await burst(pipeline, args.events, args.events)
        result["steady"] = await steady(pipeline, args.rate, args.duration)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        **asyncio.run(main_async(args)),
    }
    write_result("audit_pipeline", result)
    print(json.dumps(result, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
