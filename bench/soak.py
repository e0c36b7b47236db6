"""Soak: the compose stack under a steady mixed load for a long time, and whether it holds.

Starts the stack (`deploy/compose.yaml`, its own project name and ports), then for
`--minutes` (30 by default) sends `--rate` tool calls per second (200 by default) from
four principals, with a sign-in every 30 s, each principal's refresh every 60 s (the
calls go on with the rotated token) and an API-key exchange with a call every 30 s.
Every 10 s it samples each service's memory (the RSS of its process) and the audit
lag (a marked call until its event is in the store). It prints and writes
`bench/results/soak.json` and `bench/results/soak.png`:

- memory of every service and of Redis from warm-up (the first fifth) to the end: flat
  within 10% (peaks are reported beside it);
- errors that are not an intended refusal: none;
- p99 per minute: stable;
- audit lag: under 1 s.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import MODERN_HEADERS, MODERN_WEATHER_CALL, RESULTS, ROOT, write_result  # noqa: E402

from tests.integration.oauth import OAuthClient  # noqa: E402

PROJECT = "mcp-bastion-soak"
BASE = 18200
SERVICES = ("auth", "keys", "tools", "audit")
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.env_file = workdir / "soak.env"
        subprocess.run(["bash", str(ROOT / "deploy/gen-env.sh"), str(self.env_file)],  # noqa: S603,S607
                       check=True, capture_output=True)  # fmt: skip
        base_image = (ROOT / "deploy/.base-image").read_text().strip()
        with self.env_file.open("a") as fh:
            for i, name in enumerate(SERVICES, start=1):
                fh.write(f"{name.upper()}_PORT={BASE + i}\n")
            fh.write(f"IMAGE_TAG={PROJECT}\nBASE_IMAGE={base_image}\n")
        self.env = dict(
            line.split("=", 1) for line in self.env_file.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )  # fmt: skip
        self.urls = {name: f"http://localhost:{BASE + i}" for i, name in enumerate(SERVICES, 1)}

    def compose(self, *args: str) -> str:
        argv = ["docker", "compose", "-p", PROJECT, "-f", str(ROOT / "deploy/compose.yaml"),
                "--env-file", str(self.env_file), *args]  # fmt: skip
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout  # noqa: S603

    def memory_mib(self) -> dict[str, float]:
        """Resident memory of each container's main process (VmRSS of its PID 1), in MiB.
        Not `docker stats`: its figure includes the page cache of files the container
        writes, which grows with the audit database and is not the service's memory."""
        sizes: dict[str, float] = {}
        for service in (*SERVICES, "redis"):
            try:
                status = self.compose("exec", "-T", service, "cat", "/proc/1/status")
            except subprocess.CalledProcessError:
                continue
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            if found:
                sizes[service] = round(int(found.group(1)) / 1024, 1)
        return sizes


class Soak:
    def __init__(self, stack: Stack, rate: float, seconds: float) -> None:
        self.stack, self.rate, self.seconds = stack, rate, seconds
        self.tools = f"{stack.urls['tools']}/mcp"
        self.latencies: list[tuple[float, float]] = []  # (time since start, seconds)
        self.statuses: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.samples: list[dict[str, Any]] = []
        self.tokens: dict[str, dict[str, Any]] = {}  # username -> token response
        self.clients: dict[str, OAuthClient] = {}
        self.passwords: dict[str, str] = {}
        self.started = 0.0

    async def admin_token(self, resource: str, scope: str) -> str:
        env = self.stack.env
        client = await OAuthClient.register(self.stack.urls["auth"], "soak-admin")
        body = await client.token(env["BOOTSTRAP_ADMIN_USERNAME"], env["BOOTSTRAP_ADMIN_PASSWORD"],
                                  resource=resource, scope=scope)  # fmt: skip
        return str(body["access_token"])

    async def setup(self, http: httpx2.AsyncClient) -> None:
        admin = await self.admin_token(f"{self.stack.urls['auth']}/admin", "admin:users")
        for n in range(4):
            username, password = f"soak-{n}-{secrets.token_hex(2)}", secrets.token_urlsafe(16)
            created = await http.post(
                f"{self.stack.urls['auth']}/admin/users",
                json={"username": username, "password": password, "roles": ["admin"]},
                headers={"Authorization": f"Bearer {admin}"},
            )
            created.raise_for_status()
            client = await OAuthClient.register(self.stack.urls["auth"], "soak")
            self.clients[username] = client
            self.tokens[username] = await client.token(
                username, password, resource=self.tools, scope="weather:read"
            )
            self.passwords[username] = password

    async def call(self, http: httpx2.AsyncClient, token: str, rid: str | None = None) -> None:
        headers = {**MODERN_HEADERS, "Authorization": f"Bearer {token}"}
        if rid:
            headers["X-Request-ID"] = rid
        sent = time.monotonic()
        try:
            reply = await http.post(self.tools, content=MODERN_WEATHER_CALL, headers=headers)
            status = str(reply.status_code)
            ok = reply.status_code == 200 and '"isError":true' not in reply.text
        except httpx2.HTTPError as exc:
            status, ok = type(exc).__name__, False
        self.latencies.append((sent - self.started, time.monotonic() - sent))
        self.statuses[status] += 1
        if not ok:
            self.unexpected[status] += 1

    async def calls(self, http: httpx2.AsyncClient, end: float) -> None:
        users = list(self.tokens)
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while time.monotonic() < end:
            due = self.started + n / self.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            token = self.tokens[users[n % len(users)]]["access_token"]
            task = asyncio.create_task(self.call(http, token))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks)

    async def mixed(self, http: httpx2.AsyncClient, end: float) -> None:
        """Sign-ins, refreshes and a key exchange beside the calls."""
        keys_admin = await self.admin_token(self.stack.urls["keys"], "weather:read")
        created = await http.post(f"{self.stack.urls['keys']}/v1/keys",
                                  json={"name": "soak", "permissions": ["weather:read"]},
                                  headers={"Authorization": f"Bearer {keys_admin}"})  # fmt: skip
        created.raise_for_status()
        api_key = created.json()["api_key"]
        tick = 0
        while time.monotonic() < end:
            await asyncio.sleep(30)
            tick += 1
            try:
                user = list(self.tokens)[tick % len(self.tokens)]
                await self.clients[user].token(user, self.passwords[user], resource=self.tools,
                                               scope="weather:read")  # fmt: skip
                self.statuses["sign_in"] += 1
                if tick % 2 == 0:
                    for name, client in self.clients.items():
                        refreshed = await http.post(
                            f"{self.stack.urls['auth']}/token",
                            data={"grant_type": "refresh_token", "client_id": client.client_id,
                                  "refresh_token": self.tokens[name]["refresh_token"]},
                        )  # fmt: skip
                        refreshed.raise_for_status()
                        self.tokens[name] = refreshed.json()
                        self.statuses["refresh"] += 1
                exchanged = await http.post(
                    f"{self.stack.urls['keys']}/token",
                    data={"grant_type": EXCHANGE, "subject_token": api_key,
                          "subject_token_type": "urn:mcp-secure:api-key", "resource": self.tools},
                )  # fmt: skip
                exchanged.raise_for_status()
                await self.call(http, exchanged.json()["access_token"])
                self.statuses["key_exchange"] += 1
            except (httpx2.HTTPError, KeyError) as exc:
                self.unexpected[f"mixed:{type(exc).__name__}"] += 1

    async def sampler(self, http: httpx2.AsyncClient, end: float) -> None:
        audit_token = await self.admin_token(self.stack.urls["audit"], "metrics:view")
        audit_at = time.monotonic()
        while time.monotonic() < end:
            await asyncio.sleep(10)
            if time.monotonic() - audit_at > 900:
                audit_token, audit_at = (
                    await self.admin_token(self.stack.urls["audit"], "metrics:view"),
                    time.monotonic(),
                )
            rid = secrets.token_hex(16)
            user = next(iter(self.tokens))
            since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
            await self.call(http, self.tokens[user]["access_token"], rid)
            marked = time.monotonic()
            lag = None
            while time.monotonic() - marked < 10:
                page = await http.get(
                    f"{self.stack.urls['audit']}/v1/events",
                    params={
                        "type": "tool.called",
                        "principal": user,
                        "since": since,
                        "limit": "1000",
                    },
                    headers={"Authorization": f"Bearer {audit_token}"},
                )
                if any(e.get("request_id") == rid for e in page.json().get("events", [])):
                    lag = time.monotonic() - marked
                    break
                await asyncio.sleep(0.05)
            memory = await asyncio.to_thread(self.stack.memory_mib)
            self.samples.append({"t": round(time.monotonic() - self.started, 1),
                                 "audit_lag_s": round(lag, 3) if lag is not None else None,
                                 "memory_mib": memory})  # fmt: skip
            print(json.dumps(self.samples[-1]), flush=True)  # noqa: T201 - progress

    async def run(self) -> None:
        limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx2.AsyncClient(timeout=15, limits=limits) as http:
            await self.setup(http)
            self.started = time.monotonic()
            end = self.started + self.seconds
            await asyncio.gather(self.calls(http, end), self.mixed(http, end),
                                 self.sampler(http, end))  # fmt: skip


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


def summarise(soak: Soak, minutes: float, rate: float) -> dict[str, Any]:
    warm = [s for s in soak.samples if s["t"] >= soak.seconds / 5]
    memory: dict[str, dict[str, float]] = {}
    for name in sorted({n for s in warm for n in s["memory_mib"]}):
        values = [s["memory_mib"][name] for s in warm if name in s["memory_mib"]]
        first, last, peak = values[0], values[-1], max(values)
        # Growth is where memory ends against where it settled; a peak alone is a moment's
        # working memory (one argon2id hash at a sign-in takes 64 MiB, then gives it back).
        memory[name] = {"after_warmup": first, "end": last, "peak": peak,
                        "growth_pct": round(100 * (last - first) / first, 1)}  # fmt: skip
    per_minute: dict[int, list[float]] = {}
    for at, seconds in soak.latencies:
        per_minute.setdefault(int(at // 60), []).append(seconds)
    p99s = {m: round(p99(v) * 1000, 2) for m, v in sorted(per_minute.items()) if v}
    p50s = {m: round(statistics.median(v) * 1000, 2) for m, v in sorted(per_minute.items()) if v}
    lags = [s["audit_lag_s"] for s in soak.samples if s["audit_lag_s"] is not None]
    calls = sum(1 for _ in soak.latencies)
    return {
        "minutes": minutes, "rate_asked": rate,
        "rate_held": round(calls / soak.seconds, 1),
        "calls": calls, "statuses": dict(soak.statuses),
        "unexpected": dict(soak.unexpected),
        "memory_mib": memory,
        "memory_flat_within_10pct": all(m["growth_pct"] <= 10 for m in memory.values()),
        "p50_ms_per_minute": p50s,
        "p99_ms_per_minute": p99s,
        "audit_lag_s": {"max": max(lags) if lags else None,
                        "median": statistics.median(lags) if lags else None,
                        "missing": sum(1 for s in soak.samples if s["audit_lag_s"] is None)},
    }  # fmt: skip


def plot(soak: Soak, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, lat) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for name in sorted({n for s in soak.samples for n in s["memory_mib"]}):
        points = [(s["t"] / 60, s["memory_mib"][name]) for s in soak.samples
                  if name in s["memory_mib"]]  # fmt: skip
        mem.plot(*zip(*points, strict=True), label=name)
    mem.set_ylabel("RSS (MiB)")
    mem.legend(loc="upper left", fontsize="small")
    per_minute: dict[int, list[float]] = {}
    for at, seconds in soak.latencies:
        per_minute.setdefault(int(at // 60), []).append(seconds)
    minutes = sorted(per_minute)
    lat.plot(minutes, [p99(per_minute[m]) * 1000 for m in minutes], label="p99")
    lat.plot(minutes, [statistics.median(per_minute[m]) * 1000 for m in minutes], label="p50")
    lat.set_ylabel("tool call latency (ms)")
    lat.set_xlabel("minutes")
    lat.legend(loc="upper left", fontsize="small")
    fig.suptitle(f"MCP Bastion soak: {soak.rate:.0f} calls/s asked")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        stack = Stack(Path(workdir))
        try:
            stack.compose("down", "--volumes")
            stack.compose("up", "--build", "--detach", "--wait", "--wait-timeout", "300")
            soak = Soak(stack, args.rate, args.minutes * 60)
            asyncio.run(soak.run())
        finally:
            if not os.environ.get("SOAK_KEEP"):
                stack.compose("down", "--volumes")
    figures = summarise(soak, args.minutes, args.rate)
    print(json.dumps(figures, indent=2))  # noqa: T201 - the result
    write_result("soak", figures)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(soak, RESULTS / "soak.png")


if __name__ == "__main__":
    main()
