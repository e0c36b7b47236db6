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
Output: requests/s, p50/p95/p99, server CPU per request and non-2xx counts; writes
bench/results/keys_exchange.json.

    .venv/bin/python bench/keys_exchange.py [--duration 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from typing import Any
from urllib.parse import urlencode

import httpx2
from harness import (
    PYTHON,
    SERVER_CPU,
    Issuer,
    Processes,
    Wrk,
    cpu_seconds,
    free_port,
    pinned,
    require,
    wait_port,
    write_result,
)

TOOLS = "http://localhost:8003/mcp"


def measure(url: str, body: str, headers: dict[str, str], args: argparse.Namespace,
            pid: int) -> dict[str, Any]:  # fmt: skip
    cpu_before = cpu_seconds(pid)
    data = Wrk(url, body, headers, args.connections, args.duration).run()
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
    require("wrk", "redis-server")

    issuer = Issuer()
    with Processes("keys-bench-") as procs:
        _, redis_url = procs.redis()
        keys_port = free_port()
        keys_url = f"http://127.0.0.1:{keys_port}"
        env = {
            **os.environ, "PORT": str(keys_port), "REDIS_URL": redis_url,
            "LOG_LEVEL": "WARNING", "BASTION_SPOOL_DIR": str(procs.workdir / "spool"),
            "KEYS_HMAC_SECRET": secrets.token_urlsafe(40),
            "KEYS_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(40),
            "KEYS_PUBLIC_URL": keys_url, "KEYS_AUTH_ISSUER": issuer.issuer,
            "KEYS_AUTH_INTERNAL_URL": issuer.internal_url,
            "KEYS_TOOLS_RESOURCE": TOOLS,
        }  # fmt: skip
        pid = procs.start(pinned([PYTHON, "-m", "bastion_keys"], SERVER_CPU), env=env).pid
        wait_port(keys_port)
        owner = issuer.token(keys_url, scope="weather:read files:read", roles=["user"])
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
        form_headers = {"Content-Type": "application/x-www-form-urlencoded"}
        httpx2.post(f"{keys_url}/token", content=form, headers=form_headers).raise_for_status()
        service = issuer.token(keys_url, sub="bastion-tools", client_id="bastion-tools",
                               scope="", roles=[])  # fmt: skip
        introspect_headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {service}",
        }
        results: dict[str, Any] = {
            "exchange": measure(f"{keys_url}/token", form, form_headers, args, pid),
            "introspect": measure(
                f"{keys_url}/v1/introspect",
                json.dumps({"api_key": api_key}),
                introspect_headers,
                args,
                pid,
            ),
            "connections": args.connections,
            "duration_s": args.duration,
            "cpus": os.cpu_count(),
        }
        info = httpx2.get(f"{keys_url}/v1/keys", headers={"Authorization": f"Bearer {owner}"})
        results["use_count_seen_at_once"] = info.json()[0]["use_count"]
    issuer.close()
    out = write_result("keys_exchange", results)
    for name in ("exchange", "introspect"):
        r = results[name]
        print(
            f"{name:11s} {r['calls_per_s']:8.1f}/s  p50 {r['p50_ms']:.2f} ms  "
            f"p95 {r['p95_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
            f"server CPU {r['server_cpu_ms_per_request']} ms/req  errors {r['errors']}"
        )
    print(f"written {out}")


if __name__ == "__main__":
    main()
