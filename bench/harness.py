"""What every benchmark script shares: ports, CPU pinning, a private redis-server, a
stand-in token issuer (ES256 JWKS served from this process), the `tools` server's
environment, and `wrk` (one Lua script, one parser: calls/s, p50/p95/p99).

The machine has two cores: servers under test go on CPU 0 (`SERVER_CPU`), the load
generator and Redis on CPU 1 (`LOAD_CPU`), so that load generation does not steal the
server's core. Scripts import this module as `harness` (they run as `python bench/x.py`,
so bench/ is on sys.path).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
ISSUER = "http://bench-auth.invalid"
SERVER_CPU = 0
LOAD_CPU = 1

# Percentiles wrk reports for merging runs of several wrk processes (`merge_latency`):
# midpoints of 0.5 % slices, so each stands for an equal share of that run's requests.
QUANTILE_GRID = [0.25 + 0.5 * i for i in range(200)]

MCP_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-06-18",
}
WEATHER_CALL = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_weather", "arguments": {"city": "Paris"}},
    }  # fmt: skip
)


# The same call in the 2026-07-28 protocol, which SDK 2.x clients speak first: no
# handshake and no session, each request carries its envelope (`_meta`) and names its
# method and tool in headers.
MODERN_VERSION = "2026-07-28"
MODERN_HEADERS = {
    **MCP_HEADERS,
    "MCP-Protocol-Version": MODERN_VERSION,
    "Mcp-Method": "tools/call",
    "Mcp-Name": "get_weather",
}
MODERN_WEATHER_CALL = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "get_weather",
            "arguments": {"city": "Paris"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
            },
        },
    }  # fmt: skip
)


# -- a tool that costs CPU ----------------------------------------------------------------

# Milliseconds of CPU each get_weather call spends before it reads Redis, on whichever
# server reads this variable at start-up (both sides of tools_overhead.py): a tool that
# does some work, against which the pipeline's fixed cost per call is what users see.
TOOL_CPU_ENV = "BENCH_TOOL_CPU_MS"


def burn_cpu(ms: float) -> None:
    """Keep this thread on the CPU for `ms` milliseconds of its own CPU time (time it
    spends descheduled does not count, so a busy machine does not shorten the work)."""
    end = time.thread_time_ns() + int(ms * 1e6)
    while time.thread_time_ns() < end:
        pass


def tool_cpu_from_env() -> None:
    """Make `WeatherStore.latest` (the get_weather tool of both servers) burn
    `$BENCH_TOOL_CPU_MS` of CPU per call; nothing when the variable is unset or 0."""
    ms = float(os.environ.get(TOOL_CPU_ENV) or 0)
    if ms <= 0:
        return
    from bastion_tools.tools.weather import WeatherStore

    latest = WeatherStore.latest

    async def slow_latest(self: WeatherStore, city: str) -> dict[str, Any] | None:
        burn_cpu(ms)
        return await latest(self, city)

    WeatherStore.latest = slow_latest  # type: ignore[method-assign]


def tools_argv() -> list[str]:
    """The secured server as the benchmarks start it: `python -m bastion_tools` through
    bench/serve_tools.py, which applies `tool_cpu_from_env` first."""
    return [PYTHON, str(ROOT / "bench" / "serve_tools.py")]


# -- processes ------------------------------------------------------------------------


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


def pinned(argv: Sequence[str], cpu: int) -> list[str]:
    """`argv` run on one CPU (taskset), when there is more than one to choose from."""
    taskset = shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) > 1:
        return [taskset, "-c", str(cpu), *argv]
    return list(argv)


def pin_self(cpu: int) -> None:
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: Iterable[float]) -> float:
    """The median; of an even count, the mean of the middle two (the upper one alone
    would read high: 8 rounds of a ratio would report their fifth best)."""
    return statistics.median(values)


def require(*binaries: str) -> None:
    missing = [name for name in binaries if shutil.which(name) is None]
    if missing:
        raise SystemExit(f"needs {' and '.join(missing)} (apt-get install {' '.join(missing)})")


class Processes:
    """Child processes and a scratch directory, all gone on exit (last started first)."""

    def __init__(self, prefix: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_: object) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def start(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, quiet: bool = True
    ) -> subprocess.Popen[bytes]:
        out = subprocess.DEVNULL if quiet else None
        proc = subprocess.Popen(list(argv), env=dict(env) if env else None, stdout=out)
        self.procs.append(proc)
        return proc

    def redis(self, *, cpu: int | None = LOAD_CPU, appendonly: bool = False) -> tuple[int, str]:
        """A private redis-server with no snapshots (`cpu` None: not pinned): (pid, url)."""
        require("redis-server")
        port = free_port()
        aof = "yes" if appendonly else "no"
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", aof, "--dir", str(self.workdir)]  # fmt: skip
        proc = self.start(argv if cpu is None else pinned(argv, cpu))
        wait_port(port)
        return proc.pid, f"redis://127.0.0.1:{port}/0"


# -- a stand-in token issuer ------------------------------------------------------------


class Issuer:
    """An ES256 key, its JWKS served on a loopback port, and tokens signed with it."""

    def __init__(self, issuer: str = ISSUER) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from jwt.algorithms import ECAlgorithm

        self.issuer = issuer
        self._key = ec.generate_private_key(ec.SECP256R1())
        jwk = {**json.loads(ECAlgorithm.to_jwk(self._key.public_key())), "kid": "bench",
               "alg": "ES256", "use": "sig"}  # fmt: skip
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

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.internal_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def token(self, audience: str, **claims: Any) -> str:
        """An RFC 9068 access token; `claims` override the defaults (sub, scope, roles...)."""
        import jwt

        now = int(time.time())
        base = {"iss": self.issuer, "sub": "bench", "aud": audience, "iat": now, "nbf": now,
                "exp": now + 3600, "jti": uuid.uuid4().hex, "client_id": "bench",
                "scope": "weather:read", "roles": ["admin"]}  # fmt: skip
        return jwt.encode({**base, **claims}, self._key, algorithm="ES256",
                          headers={"typ": "at+jwt", "kid": "bench"})  # fmt: skip

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def tools_env(
    *,
    port: int,
    public_url: str,
    redis_url: str,
    issuer: Issuer,
    workdir: Path,
    stateless: bool = True,
    rate_limits: Mapping[str, tuple[int, float]] | None = None,
    log_level: str = "WARNING",
) -> dict[str, str]:
    """Environment of one `python -m bastion_tools` process trusting `issuer` only.

    Replicas share `public_url` (the tokens' audience) and `redis_url`, not `port`.
    """
    # By default a bucket no run can empty: every call still pays the Lua script.
    limits = rate_limits if rate_limits is not None else {"admin": (10**9, 10**6)}
    return {
        **os.environ,
        "PORT": str(port),
        "TOOLS_HOST": "127.0.0.1",
        "REDIS_URL": redis_url,
        "LOG_LEVEL": log_level,
        "BASTION_SPOOL_DIR": str(workdir / f"spool-{port}"),
        "TOOLS_CLIENT_SECRET": secrets.token_urlsafe(40),
        "TOOLS_PUBLIC_URL": public_url,
        "TOOLS_AUTH_ISSUER": issuer.issuer,
        "TOOLS_AUTH_INTERNAL_URL": issuer.internal_url,
        "TOOLS_KEYS_ISSUER": "",
        "TOOLS_SANDBOX_ROOT": str(workdir / "sandbox"),
        "TOOLS_STATELESS_HTTP": "true" if stateless else "false",
        "TOOLS_JSON_RESPONSE": "true",
        "TOOLS_RATE_LIMITS": json.dumps({role: list(limit) for role, limit in limits.items()}),
    }


def mcp_headers(
    token: str | None = None, session: str | None = None, *, modern: bool = False
) -> dict[str, str]:
    headers = dict(MODERN_HEADERS if modern else MCP_HEADERS)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if session:
        headers["Mcp-Session-Id"] = session
    return headers


def open_session(url: str, token: str | None) -> str:
    """initialize + notifications/initialized; the session id the server gave."""
    import httpx2

    headers = mcp_headers(token)
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}}  # fmt: skip
    reply = httpx2.post(url, json=init, headers=headers, timeout=10)
    reply.raise_for_status()
    session = reply.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    httpx2.post(url, json=note, headers=mcp_headers(token, session), timeout=10).raise_for_status()
    return str(session)


def check_call(
    url: str, token: str | None, session: str | None = None, *, modern: bool = False
) -> None:
    """One get_weather call must succeed before a run measures anything."""
    import httpx2

    body = MODERN_WEATHER_CALL if modern else WEATHER_CALL
    headers = mcp_headers(token, session, modern=modern)
    reply = httpx2.post(url, content=body, headers=headers, timeout=10)
    result = reply.json().get("result", {}) if reply.status_code == 200 else {}
    if reply.status_code != 200 or result.get("isError") or "structuredContent" not in result:
        raise RuntimeError(f"the bench call does not work: {reply.status_code} {reply.text}")


# -- wrk ------------------------------------------------------------------------------

# Request from the environment; `done` prints one WRK_JSON line. BENCH_SESSIONS (comma
# separated, one per wrk thread) gives each thread's connections their own MCP session;
# BENCH_UNIQUE_IDS=1 numbers each request's JSON-RPC id (a session's requests in flight
# must not share one: the server routes answers by id). With BENCH_STATUSES=1
# each thread also counts responses by status (a `response` hook costs wrk a little, so
# only runs that need the count ask for it); with BENCH_QUANTILES=1 the line carries the
# QUANTILE_GRID percentiles, for merging several wrk processes.
WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end
local sessions = {}
for s in string.gmatch(os.getenv("BENCH_SESSIONS") or "", "[^,]+") do
  table.insert(sessions, s)
end
function init(args)
  if session ~= nil then wrk.headers["Mcp-Session-Id"] = session end
end
if os.getenv("BENCH_UNIQUE_IDS") == "1" then
  local counter = 0
  function request()
    counter = counter + 1
    local body = string.gsub(wrk.body, '"id": 1,', '"id": ' .. counter .. ',', 1)
    return wrk.format(nil, nil, nil, body)
  end
end
statuses = {}
if os.getenv("BENCH_STATUSES") == "1" then
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  if #sessions > 0 then thread:set("session", sessions[#threads]) end
end
function done(summary, latency, requests)
  local e = summary.errors
  local out = string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, "p50_us": %d, '
    .. '"p95_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    latency.mean)
  if os.getenv("BENCH_STATUSES") == "1" then
    local counts = {}
    for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
        counts[status] = (counts[status] or 0) + n
      end
    end
    local parts = {}
    for status, n in pairs(counts) do table.insert(parts, string.format('"%d": %d', status, n)) end
    out = out .. ', "statuses": {' .. table.concat(parts, ", ") .. '}'
  end
  local grid = os.getenv("BENCH_QUANTILES")
  if grid ~= nil and grid ~= "" then
    local parts = {}
    for q in string.gmatch(grid, "[^,]+") do
      table.insert(parts, string.format("%d", latency:percentile(tonumber(q))))
    end
    out = out .. ', "quantiles_us": [' .. table.concat(parts, ", ") .. ']'
  end
  io.write("WRK_JSON " .. out .. "}\n")
end
"""


@dataclass
class Wrk:
    """One wrk process (pinned to LOAD_CPU); `start` it, then `result`. One thread, or
    one per session in `sessions` (each with `connections / len(sessions)` connections
    in that session)."""

    url: str
    body: str
    headers: Mapping[str, str]
    connections: int
    duration: float
    statuses: bool = False
    quantiles: bool = False
    cpu: int = LOAD_CPU
    sessions: Sequence[str] = ()
    _proc: subprocess.Popen[str] | None = None
    _script: Path | None = None

    def start(self) -> Wrk:
        fd, name = tempfile.mkstemp(prefix="bench-", suffix=".lua")
        with os.fdopen(fd, "w") as fh:
            fh.write(WRK_SCRIPT)
        self._script = Path(name)
        env = {
            **os.environ,
            "BENCH_BODY": self.body,
            "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in self.headers.items()),
            "BENCH_STATUSES": "1" if self.statuses else "",
            "BENCH_QUANTILES": ",".join(str(q) for q in QUANTILE_GRID) if self.quantiles else "",
            "BENCH_SESSIONS": ",".join(self.sessions),
            "BENCH_UNIQUE_IDS": "1" if self.sessions else "",
        }
        threads = max(1, len(self.sessions))
        argv = ["wrk", f"-t{threads}", f"-c{self.connections}", f"-d{self.duration}s",
                "--timeout", "10s", "-s", name, self.url]  # fmt: skip
        self._proc = subprocess.Popen(
            pinned(argv, self.cpu), env=env, stdout=subprocess.PIPE, text=True
        )
        return self

    def result(self) -> dict[str, Any]:
        assert self._proc is not None and self._script is not None, "start() first"
        out, _ = self._proc.communicate()
        self._script.unlink(missing_ok=True)
        if self._proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({self._proc.returncode}): {out}")
        line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
        return parse_wrk(line.removeprefix("WRK_JSON "))

    def run(self) -> dict[str, Any]:
        return self.start().result()


def parse_wrk(line: str) -> dict[str, Any]:
    """wrk's WRK_JSON line -> calls/s and latencies in ms (errors = socket + non-2xx)."""
    raw = json.loads(line)
    seconds = raw["duration_us"] / 1e6
    out: dict[str, Any] = {
        "calls_per_s": round(raw["requests"] / seconds, 1),
        "requests": raw["requests"],
        "errors": raw["errors"] + raw["non2xx"],
        "p50_ms": raw["p50_us"] / 1000,
        "p95_ms": raw["p95_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": round(raw["mean_us"] / 1000, 3),
        "duration_s": round(seconds, 3),
    }
    if "statuses" in raw:
        out["statuses"] = {str(k): v for k, v in sorted(raw["statuses"].items())}
    if "quantiles_us" in raw:
        out["quantiles_ms"] = [v / 1000 for v in raw["quantiles_us"]]
    return out


def merge_latency(runs: Sequence[Mapping[str, Any]], percentiles: Iterable[float]) -> list[float]:
    """Percentiles of the requests of several wrk runs taken together.

    Each run's QUANTILE_GRID values stand for equal shares of its requests (weight
    requests / len(grid)); the merged percentile is the weighted one of all those values.
    Exact to the grid's resolution (0.5 % of each run's requests).
    """
    points = sorted(
        (value, run["requests"] / len(run["quantiles_ms"]))
        for run in runs
        for value in run["quantiles_ms"]
    )
    total = sum(weight for _, weight in points)
    out = []
    for p in percentiles:
        target, seen = total * p / 100, 0.0
        for value, weight in points:
            seen += weight
            if seen >= target - 1e-9:
                out.append(value)
                break
        else:
            out.append(points[-1][0])
    return out


def write_result(name: str, data: Mapping[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
