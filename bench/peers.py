"""The tools service against what else secures an MCP server: the same tool, the same
transport, the same wrk load, side by side in one run.

- `bastion`: the tools service itself (`python -m bastion_tools`: create_app under
  uvicorn with uvloop), trusting the bench's ES256 issuer, on a private redis-server;
- `sdk`: the `mcp` SDK's own bearer auth, a `TokenVerifier` checking the same ES256 JWT
  against the same JWKS under the SDK's auth middleware (bench/peer_servers.py), each
  token verified once and its answer kept until it expires, as the tools service does;
- `sdk-every-call`: the same verifier verifying every call in full, as the SDK's own
  examples do (the ratio against it is printed, not the target's);
- `fastmcp`: FastMCP, newest release, with its `JWTVerifier` and its
  `RateLimitingMiddleware` (bench/peer_servers.py).

Each peer is installed by this script into a virtualenv of its own under bench/.peers/
(git-ignored, never in the project's lock; `--reinstall` starts it afresh): the SDK
peer with the `mcp` version of the project's lock, FastMCP upgraded to the newest
release each run; uvicorn, uvloop and redis-py pinned to the project's versions. The
versions are printed and recorded.

All serve `get_weather(city)` (one Redis GET) over streamable HTTP at /mcp, stateless,
JSON responses, protocol 2025-06-18, with the same token for every call. Each server is
pinned to CPU 0 and loaded alone by wrk on CPU 1, in turn, the order rotating each round
so that drift falls on all alike; medians are kept, and the ratios are the medians of
each round's ratios. Before measuring, each server must answer the call and refuse a
call without a token (401); a token for another audience and one without the tool's
scope are tried too and their statuses recorded. Writes bench/results/peers.json.

    .venv/bin/python bench/peers.py [--rounds 5] [--duration 5] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from harness import (
    PYTHON,
    ROOT,
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
    pinned,
    require,
    tools_argv,
    tools_env,
    wait_port,
    write_result,
)

PEERS_DIR = ROOT / "bench" / ".peers"
SERVERS = ROOT / "bench" / "peer_servers.py"
NAMES = ("bastion", "sdk", "sdk-every-call", "fastmcp")
VENVS = {"sdk": "sdk", "sdk-every-call": "sdk", "fastmcp": "fastmcp"}  # server: its virtualenv

# What each server checks on a tools/call, so that the ratios are read for what they are.
ENFORCES = {
    "bastion": (
        "Host and Origin; ES256 signature (verified once per token, then cached by its "
        "hash), issuer, audience (RFC 8707), expiry; revocation denylist and a token "
        "bucket per principal in Redis (one Lua round trip per call, shared by every "
        "replica); RBAC per tool with tools/list filtering and step-up; argument "
        "validation; an audit event per call, written to the Redis stream"
    ),
    "sdk": (
        "Host and Origin (the SDK's default on 127.0.0.1); ES256 signature (PyJWT, JWKS "
        "fetched once at start-up; verified once per token, the answer kept until the "
        "token expires), issuer, audience, expiry; one "
        "required scope (weather:read) for every tool. No rate limit, no revocation, no "
        "per-tool permission, no audit record"
    ),
    "sdk-every-call": "as sdk, with the signature verified on every call",
    "fastmcp": (
        "Host and Origin (FastMCP's default); ES256 signature (joserfc, JWKS keys "
        "cached), issuer, audience, expiry, one required scope (weather:read) for every "
        "tool; a token bucket per client in the process's memory (per process: not "
        "shared between workers or replicas, reset by a restart). No revocation, no "
        "per-tool permission, no audit record"
    ),
}

_PINNED = ("uvicorn", "uvloop", "redis", "hiredis")


def requirements(peer: str) -> tuple[list[str], bool]:
    """What goes into the peer's virtualenv, and whether to upgrade it to the newest."""
    common = [f"{name}=={version(name)}" for name in _PINNED]
    if peer == "sdk":
        return [f"mcp=={version('mcp')}", f"pyjwt[crypto]=={version('pyjwt')}", *common], False
    if peer == "contextforge":  # bench/gateway_peers.py: its own pins, nothing of ours
        return ["mcp-contextforge-gateway"], True
    return ["fastmcp", *common], True


def install(peer: str, *, fresh: bool = False) -> Path:
    """The peer's virtualenv under bench/.peers/, made or brought up to date: its python."""
    venv = PEERS_DIR / peer
    if fresh:
        shutil.rmtree(venv, ignore_errors=True)
    python = venv / "bin" / "python"
    packages, upgrade = requirements(peer)
    uv = shutil.which("uv") or str(ROOT / ".venv" / "bin" / "uv")
    if Path(uv).exists():
        if not python.exists():
            subprocess.run([uv, "venv", "-q", "--python", "python3", str(venv)], check=True)
        argv = [uv, "pip", "install", "-q", "--python", str(python)]
    else:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        argv = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*argv, *(["--upgrade"] if upgrade else []), *packages], check=True)
    return python


def versions(python: Path | str) -> dict[str, str]:
    """The versions that matter in one interpreter's environment."""
    probe = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "for name in ('mcp', 'fastmcp', 'pyjwt', 'joserfc', 'starlette', 'uvicorn', 'uvloop',"
        " 'redis'):\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout))


def status_of(url: str, token: str | None) -> int:
    import httpx2

    reply = httpx2.post(url, content=WEATHER_CALL, headers=mcp_headers(token), timeout=10)
    return reply.status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all servers in turn")
    parser.add_argument("--reinstall", action="store_true", help="rebuild bench/.peers/*")
    args = parser.parse_args()
    require("wrk", "redis-server")

    pythons = {"bastion": Path(PYTHON)}
    for venv in sorted(set(VENVS.values())):
        python = install(venv, fresh=args.reinstall)
        pythons.update({name: python for name, of in VENVS.items() if of == venv})
    found = {name: versions(python) for name, python in pythons.items()}
    for name in NAMES:
        listed = ", ".join(f"{k} {v}" for k, v in found[name].items())
        print(f"{name}: {listed}\n  enforces: {ENFORCES[name]}", file=sys.stderr)

    with Processes("peers-bench-") as procs:
        _, redis_url = procs.redis()
        issuer = Issuer()
        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        for name in NAMES:
            port = free_port()
            urls[name] = f"http://localhost:{port}/mcp"
            if name == "bastion":
                public = f"http://localhost:{port}"
                env = tools_env(port=port, public_url=public, redis_url=redis_url,
                                issuer=issuer, workdir=procs.workdir)  # fmt: skip
                argv = tools_argv()
            else:
                env = {**os.environ, "FASTMCP_LOG_LEVEL": "WARNING"}
                env.pop("PYTHONPATH", None)
                argv = [str(pythons[name]), str(SERVERS), name, str(port), redis_url,
                        issuer.internal_url, issuer.issuer, urls[name]]  # fmt: skip
            pids[name] = procs.start(pinned(argv, SERVER_CPU), env=env).pid
        tokens = {name: issuer.token(url) for name, url in urls.items()}
        refusals: dict[str, dict[str, int]] = {}
        for name, url in urls.items():
            wait_port(int(url.rsplit(":", 1)[1].split("/")[0]), timeout=60)
            check_call(url, tokens[name])
            refusals[name] = {
                "no token": status_of(url, None),
                "token for another audience": status_of(url, issuer.token("http://other/mcp")),
                "token without weather:read": status_of(url, issuer.token(url, scope="files:read")),
            }  # fmt: skip
            if refusals[name]["no token"] != 401:
                raise RuntimeError(f"{name} answers a call without a token: {refusals[name]}")
            print(f"{name} refuses: {refusals[name]}", file=sys.stderr)

        def load(name: str, duration: float) -> Wrk:
            return Wrk(urls[name], WEATHER_CALL, mcp_headers(tokens[name]), args.connections,
                       duration)  # fmt: skip

        for name in NAMES:
            load(name, args.warmup).run()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in NAMES}
        for round_no in range(args.rounds):
            turn = round_no % len(NAMES)
            order = NAMES[turn:] + NAMES[:turn]  # none always first
            for name in order:
                before = cpu_seconds(pids[name])
                run = load(name, args.duration).run()
                cpu = cpu_seconds(pids[name]) - before
                run["server_cpu_ms_per_call"] = round(cpu * 1000 / max(1, run["requests"]), 3)
                run["server_busy"] = round(cpu / run["duration_s"], 3)
                runs[name].append(run)
            line = ", ".join(f"{n} {runs[n][-1]['calls_per_s']:.0f}/s" for n in NAMES)
            print(f"round {round_no + 1}/{args.rounds}: {line}", file=sys.stderr)
        issuer.close()

    keys = ("calls_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_call", "server_busy", "errors")
    results = {name: {key: median(r[key] for r in rs) for key in keys} for name, rs in runs.items()}

    def ratio(peer: str) -> dict[str, float]:
        each = [b["calls_per_s"] / p["calls_per_s"]
                for b, p in zip(runs["bastion"], runs[peer], strict=True)]  # fmt: skip
        return {"median": round(median(each), 3), "min": round(min(each), 3),
                "max": round(max(each), 3)}  # fmt: skip

    summary = {
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "mode": "stateless, JSON responses, 2025-06-18",
        "versions": found,
        "enforces": ENFORCES,
        "refusals": refusals,
        "servers": results,
        "vs_sdk": ratio("sdk"),
        "vs_sdk_every_call": ratio("sdk-every-call"),
        "vs_fastmcp": ratio("fastmcp"),
    }
    print(json.dumps(summary, indent=2))
    write_result("peers", summary)


if __name__ == "__main__":
    main()
