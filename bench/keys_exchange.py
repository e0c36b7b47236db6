"""How many API-key exchanges (RFC 8693, `POST /token`) and introspections one keys
process serves per second.

`python -m bastion_keys` runs as its own process pinned to CPU 0, against a private
redis-server (no persistence) and a stand-in auth JWKS served from this process; the
load comes from `wrk` (one thread, `--connections` connections) pinned to CPU 1. Every
exchange does the whole path: form parsing, length/format check, HMAC, one Lua round
trip (failure counter + record), constant-time compare, an ES256 signature, one
pipelined write (the jti, for revocation), an audit event (queued, sent in batches) and
an in-memory usage count. Introspection is the tools server's direct-key path (service
token validated from cache, the same presentation check, no signature).
Output: requests/s, p50/p99 and non-2xx counts; writes bench/results/keys_exchange.json.

    .venv/bin/python bench/keys_exchange.py [--duration 10] [--connections 16]
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
from urllib.parse import urlencode

import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ISSUER = "http://bench-auth.invalid"
TOOLS = "http://localhost:8003/mcp"

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
local token = os.getenv("BENCH_TOKEN")
if token ~= nil and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99)))
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


def pinned(cpu: int, argv: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) > 1:
        return [taskset, "-c", str(cpu), *argv]
    return argv


def jwks_server(private: ec.EllipticCurvePrivateKey) -> ThreadingHTTPServer:
    body = json.dumps(
        {
            "keys": [
                {
                    **json.loads(ECAlgorithm.to_jwk(private.public_key())),
                    "kid": "bench",
                    "alg": "ES256",
                    "use": "sig",
                }
            ]
        }  # fmt: skip
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def auth_token(private: ec.EllipticCurvePrivateKey, audience: str, **claims: Any) -> str:
    now = int(time.time())
    base = {"iss": ISSUER, "sub": "bench", "aud": audience, "iat": now, "nbf": now,
            "exp": now + 3600, "jti": uuid.uuid4().hex, "client_id": "bench",
            "scope": "weather:read files:read", "roles": ["user"]}  # fmt: skip
    return jwt.encode(
        {**base, **claims}, private, algorithm="ES256", headers={"typ": "at+jwt", "kid": "bench"}
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    url: str, body: str, ctype: str, token: str, args: argparse.Namespace, pid: int
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT)
        script = fh.name
    cpu_before = cpu_seconds(pid)
    try:
        out = subprocess.run(
            pinned(1, ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
                       "-s", script, url]),  # fmt: skip
            capture_output=True, text=True, check=True,
            env={**os.environ, "BENCH_BODY": body, "BENCH_CTYPE": ctype, "BENCH_TOKEN": token},
        )  # fmt: skip
    finally:
        os.unlink(script)
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRK_JSON "))
    data: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    data["per_second"] = round(data["requests"] / (data["duration_us"] / 1e6), 1)
    # CPU per request of the server process: less sensitive to other load than req/s.
    data["server_cpu_ms_per_request"] = round(
        (cpu_seconds(pid) - cpu_before) * 1000 / max(1, data["requests"]), 3
    )
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("redis-server"):
        sys.exit("needs wrk and redis-server (apt-get install wrk redis-server)")

    work = Path(tempfile.mkdtemp(prefix="keys-bench-"))
    redis_port, keys_port = free_port(), free_port()
    private = ec.generate_private_key(ec.SECP256R1())
    jwks = jwks_server(private)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL,
        ))  # fmt: skip
        wait_port(redis_port)
        keys_url = f"http://127.0.0.1:{keys_port}"
        env = {
            **os.environ, "PORT": str(keys_port), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "LOG_LEVEL": "WARNING", "BASTION_SPOOL_DIR": str(work / "spool"),
            "KEYS_HMAC_SECRET": secrets.token_urlsafe(40),
            "KEYS_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(40),
            "KEYS_PUBLIC_URL": keys_url, "KEYS_AUTH_ISSUER": ISSUER,
            "KEYS_AUTH_INTERNAL_URL": f"http://127.0.0.1:{jwks.server_address[1]}",
            "KEYS_TOOLS_RESOURCE": TOOLS,
        }  # fmt: skip
        procs.append(subprocess.Popen(
            pinned(0, [PYTHON, "-m", "bastion_keys"]), env=env, stdout=subprocess.DEVNULL,
        ))  # fmt: skip
        wait_port(keys_port)
        pid = procs[-1].pid
        owner = auth_token(private, keys_url)
        created = httpx2.post(
            f"{keys_url}/v1/keys", json={"name": "bench", "permissions": ["weather:read"]},
            headers={"Authorization": f"Bearer {owner}"},
        )  # fmt: skip
        created.raise_for_status()
        api_key = created.json()["api_key"]
        form = urlencode({
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": api_key, "subject_token_type": "urn:mcp-secure:api-key",
            "resource": TOOLS,
        })  # fmt: skip
        check = httpx2.post(
            f"{keys_url}/token", content=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        check.raise_for_status()
        service = auth_token(private, keys_url, sub="bastion-tools", client_id="bastion-tools",
                             scope="", roles=[])  # fmt: skip
        results: dict[str, Any] = {
            "exchange": run_wrk(
                f"{keys_url}/token", form, "application/x-www-form-urlencoded", "", args, pid
            ),  # fmt: skip
            "introspect": run_wrk(
                f"{keys_url}/v1/introspect",
                json.dumps({"api_key": api_key}),
                "application/json",
                service,
                args,
                pid,
            ),  # fmt: skip
            "connections": args.connections,
            "duration_s": args.duration,
            "cpus": os.cpu_count(),
        }
        info = httpx2.get(f"{keys_url}/v1/keys", headers={"Authorization": f"Bearer {owner}"})
        results["use_count_seen_at_once"] = info.json()[0]["use_count"]
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=15)
        jwks.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "bench" / "results" / "keys_exchange.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name in ("exchange", "introspect"):
        r = results[name]
        print(
            f"{name:11s} {r['per_second']:8.1f}/s  p50 {r['p50_us'] / 1000:.2f} ms  "
            f"p99 {r['p99_us'] / 1000:.2f} ms  server CPU {r['server_cpu_ms_per_request']} ms/req"
            f"  non2xx {r['non2xx']}  errors {r['errors']}"
        )
    print(f"written {out}")


if __name__ == "__main__":
    main()
