"""What the security pipeline of `tools` costs: the same tool on two servers, one run.

- plain: the `mcp` SDK's MCPServer with `get_weather` (the same tool code, reading the
  same Redis), streamable HTTP, no security at all;
- secured: `python -m bastion_tools` with the full pipeline (Host/Origin, ES256 token
  validated locally against a JWKS, one Lua round trip for denylist + token bucket,
  RBAC, argument validation, an audit event per call).

Both run with the same transport settings (JSON responses; stateless HTTP by default,
`--stateful` shares one session), as separate processes pinned to CPU 0; the load comes
from `wrk` (C, one thread, 16 connections) pinned to CPU 1. The token is the same for
every call, so its signature is verified once and then served from the cache, as for a
real client. The two servers are measured alternately (`--rounds`, medians kept) so that
other load on the machine falls on both alike. Output: calls/s, p50/p99 and the server
process's CPU time per call for each server, the throughput ratio, and the differences
(the pipeline's own cost per call). Writes bench/results/tools_overhead.json.

    .venv/bin/python bench/tools_overhead.py [--duration 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ISSUER = "http://bench-auth.invalid"

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("MCP_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-06-18"
local token = os.getenv("MCP_TOKEN")
if token ~= nil and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
local session = os.getenv("MCP_SESSION")
if session ~= nil and session ~= "" then wrk.headers["Mcp-Session-Id"] = session end
function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def pinned(argv: list[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else argv


# -- the plain server (run in its own process) --------------------------------------


def serve_plain(port: int, redis_url: str, stateless: bool) -> None:
    import uvicorn
    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings
    from redis.asyncio import Redis

    from bastion_tools.tools.weather import WeatherStore

    redis = Redis.from_url(redis_url)
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
    import logging

    logging.getLogger("mcp").setLevel(logging.WARNING)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the JWKS of the bench's issuer ---------------------------------------------------


def start_jwks(jwk: dict[str, Any]) -> tuple[ThreadingHTTPServer, int]:
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def make_token(resource: str) -> tuple[str, dict[str, Any]]:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "bench", "alg": "ES256",
           "use": "sig"}  # fmt: skip
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "bench", "aud": resource, "iat": now, "nbf": now,
              "exp": now + 3600, "jti": uuid.uuid4().hex, "client_id": "bench",
              "scope": "weather:read", "roles": ["admin"]}  # fmt: skip
    token = jwt.encode(claims, key, algorithm="ES256", headers={"typ": "at+jwt", "kid": "bench"})
    return token, jwk


# -- load ---------------------------------------------------------------------------


def open_session(url: str, token: str | None) -> str:
    import httpx2

    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2025-06-18"}  # fmt: skip
    if token:
        headers["Authorization"] = f"Bearer {token}"
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}}  # fmt: skip
    reply = httpx2.post(url, json=init, headers=headers, timeout=10)
    reply.raise_for_status()
    session = reply.headers["mcp-session-id"]
    headers["Mcp-Session-Id"] = session
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    httpx2.post(url, json=note, headers=headers, timeout=10).raise_for_status()
    return session


def check_call(url: str, body: str, token: str | None, session: str | None) -> None:
    import httpx2

    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2025-06-18"}  # fmt: skip
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if session:
        headers["Mcp-Session-Id"] = session
    reply = httpx2.post(url, content=body, headers=headers, timeout=10)
    result = reply.json().get("result", {})
    if reply.status_code != 200 or result.get("isError") or "structuredContent" not in result:
        raise RuntimeError(f"the bench call does not work: {reply.status_code} {reply.text}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def run_wrk(url: str, body: str, *, token: str | None, session: str | None, connections: int,
            duration: int, script: Path) -> dict[str, float]:  # fmt: skip
    argv = pinned(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
                   "-s", str(script), url], 1)  # fmt: skip
    env = {**os.environ, "MCP_BODY": body, "MCP_TOKEN": token or "", "MCP_SESSION": session or ""}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    raw = json.loads(next(x for x in out.splitlines() if x.startswith("WRK_JSON "))[9:])
    seconds = raw["duration_us"] / 1e6
    return {
        "calls_per_s": round(raw["requests"] / seconds, 1),
        "requests": raw["requests"],
        "errors": raw["errors"] + raw["non2xx"],
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": round(raw["mean_us"] / 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; medians kept")
    parser.add_argument("--stateful", action="store_true", help="one shared session per server")
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the secured server")
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy both servers in the last round (raw stacks to DIR)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        raise SystemExit("needs wrk and redis-server (apt-get install wrk redis-server)")

    procs: list[subprocess.Popen[bytes]] = []
    workdir = Path(tempfile.mkdtemp(prefix="tools-bench-"))
    try:
        redis_port = free_port()
        procs.append(subprocess.Popen(
            pinned(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(workdir)], 1),
            stdout=subprocess.DEVNULL))  # fmt: skip
        wait_port(redis_port)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"

        plain_port, secure_port = free_port(), free_port()
        resource = f"http://localhost:{secure_port}/mcp"
        token, jwk = make_token(resource)
        jwks_server, jwks_port = start_jwks(jwk)
        stateless = not args.stateful
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "libs/common/src"), str(ROOT / "services/tools/src")]
            ),
        }
        plain_proc = subprocess.Popen(
            pinned([PYTHON, __file__, "serve-plain", str(plain_port), redis_url,
                    "1" if stateless else "0"], 0), env=env)  # fmt: skip
        procs.append(plain_proc)
        secure_env = {
            **env,
            "PORT": str(secure_port),
            "TOOLS_HOST": "127.0.0.1",
            "REDIS_URL": redis_url,
            "LOG_LEVEL": args.log_level,
            "BASTION_SPOOL_DIR": str(workdir / "spool"),
            "TOOLS_CLIENT_SECRET": secrets.token_urlsafe(40),
            "TOOLS_PUBLIC_URL": f"http://localhost:{secure_port}",
            "TOOLS_AUTH_ISSUER": ISSUER,
            "TOOLS_AUTH_INTERNAL_URL": f"http://127.0.0.1:{jwks_port}",
            "TOOLS_KEYS_ISSUER": "",
            "TOOLS_SANDBOX_ROOT": str(workdir / "sandbox"),
            "TOOLS_STATELESS_HTTP": "true" if stateless else "false",
            "TOOLS_JSON_RESPONSE": "true",
            # A bucket no 16-client run can empty: every call still pays the Lua script.
            "TOOLS_RATE_LIMITS": json.dumps({"admin": [10**9, 10**6]}),
        }
        secure_proc = subprocess.Popen(
            pinned([PYTHON, "-m", "bastion_tools"], 0), env=secure_env,
            stdout=subprocess.DEVNULL)  # fmt: skip
        procs.append(secure_proc)
        wait_port(plain_port)
        wait_port(secure_port)

        call = {"name": "get_weather", "arguments": {"city": "Paris"}}
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})
        script = workdir / "mcp_call.lua"
        script.write_text(WRK_SCRIPT)
        targets = {
            "plain": (f"http://127.0.0.1:{plain_port}/mcp", None, plain_proc.pid),
            "secured": (f"http://localhost:{secure_port}/mcp", token, secure_proc.pid),
        }
        sessions: dict[str, str | None] = {}
        for name, (url, bearer, _pid) in targets.items():
            sessions[name] = None if stateless else open_session(url, bearer)
            check_call(url, body, bearer, sessions[name])
            run_wrk(url, body, token=bearer, session=sessions[name],
                    connections=args.connections, duration=args.warmup, script=script)  # fmt: skip
        # Alternate the two servers so that load from anything else on the machine
        # falls on both alike; keep the median of each figure.
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for round_no in range(args.rounds):
            for name, (url, bearer, pid) in targets.items():
                spy = None
                if args.profile and round_no == args.rounds - 1 and shutil.which("py-spy"):
                    Path(args.profile).mkdir(parents=True, exist_ok=True)
                    spy = subprocess.Popen(
                        ["py-spy", "record", "-p", str(pid), "-d", str(args.duration), "-r", "250",
                         "-f", "raw", "-o", str(Path(args.profile) / f"{name}.txt")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                cpu_before = cpu_seconds(pid)
                run = run_wrk(url, body, token=bearer, session=sessions[name],
                              connections=args.connections, duration=args.duration,
                              script=script)  # fmt: skip
                if spy is not None:
                    spy.wait(timeout=args.duration + 30)
                run["server_cpu_ms_per_call"] = round(
                    (cpu_seconds(pid) - cpu_before) * 1000 / max(1, run["requests"]), 3
                )
                runs[name].append(run)
        results: dict[str, Any] = {
            name: {key: median([r[key] for r in rs]) for key in rs[0]} for name, rs in runs.items()
        }
        jwks_server.shutdown()
        plain, secured = results["plain"], results["secured"]
        summary = {
            "connections": args.connections,
            "duration_s": args.duration,
            "mode": "stateless" if stateless else "stateful (one session)",
            "secured_log_level": args.log_level,
            "plain": plain,
            "secured": secured,
            "throughput_ratio": round(secured["calls_per_s"] / plain["calls_per_s"], 3),
            "pipeline_p50_ms": round(secured["p50_ms"] - plain["p50_ms"], 3),
            "pipeline_p99_ms": round(secured["p99_ms"] - plain["p99_ms"], 3),
            "pipeline_cpu_ms_per_call": round(
                secured["server_cpu_ms_per_call"] - plain["server_cpu_ms_per_call"], 3
            ),
            "rounds": args.rounds,
        }
        print(json.dumps(summary, indent=2))
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        suffix = "" if stateless else "_stateful"
        (out / f"tools_overhead{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve-plain":
        serve_plain(int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1")
    else:
        main()
