"""The gateway's peers for `bench/gateway.py --peers`: other gateways in front of the
same upstream, called by the same client in the same alternating rounds.

- `fastmcp-proxy`: FastMCP's `create_proxy` of the upstream with its `JWTVerifier`
  (bench/peer_servers.py), newest release, in bench/.peers/fastmcp;
- `contextforge`: IBM ContextForge (`mcp-contextforge-gateway`, newest release) in
  bench/.peers/contextforge, its default SQLite store in the run's work folder, the
  upstream registered through its admin API (`POST /gateways`), its tool put in a
  virtual server (`POST /servers`), called at `/servers/{id}/mcp` with a JWT its own
  `create_jwt_token` signed (its default, HS256).

Both virtualenvs are made by `peers.install` (git-ignored, never in the project's lock).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
from harness import PYTHON, SERVER_CPU, Issuer, Processes, mcp_headers, pinned, wait_port
from peers import SERVERS, install, versions

__all__ = ["ENFORCES", "PEERS", "refused_without_token", "start_peers"]

PEERS = ("fastmcp-proxy", "contextforge")

# What each gateway checks on a forwarded tools/call (Bastion's row: bench/gateway.py).
ENFORCES = {
    "bastion": (
        "ES256 signature (verified once per token, then cached), issuer, audience "
        "(RFC 8707), expiry; revocation and a token bucket per principal in Redis (one "
        "round trip); RBAC per tool; arguments against the pinned input schema; result "
        "against the pinned output schema; credentials redacted from the result; an "
        "audit event per call in the Redis stream; the caller's token never forwarded"
    ),
    "fastmcp-proxy": (
        "ES256 signature (joserfc, JWKS cached), issuer, audience, expiry, one required "
        "scope for every tool; each call on a fresh client session to the upstream (its "
        "default for a URL target); arguments and results passed on unchecked "
        "(ProxyTool.run). No rate limit, no per-tool permission, no pinning, no "
        "redaction, no audit record"
    ),
    "contextforge": (
        "HS256 JWT signed with its own secret: signature, audience and issuer (its "
        "defaults), expiry and jti required; the user must exist in its SQLite store and "
        "the token must not be revoked (both cached, 60 s and 30 s); its RBAC (team and "
        "visibility of the virtual server and tool); a rate limit per client (in memory "
        "without Redis; here a bucket no run empties); execution metrics recorded to "
        "SQLite (buffered). Plugins (its guardrails, PII filter) are off by default and "
        "stay off here"
    ),
}

Side = tuple[str, bytes, dict[str, str]]


def start_peers(
    procs: Processes,
    issuer: Issuer,
    upstream_url: str,
    port: Callable[[], int],
    call: Callable[[str], bytes],
) -> tuple[dict[str, Side], dict[str, int], dict[str, dict[str, str]]]:
    """Each peer started in front of `upstream_url`: its side (url, body, headers), its
    pid, and the versions installed."""
    fastmcp, contextforge = install("fastmcp"), install("contextforge")
    found = {
        "bastion": versions(PYTHON),
        "fastmcp-proxy": versions(fastmcp),
        "contextforge": _cf_versions(contextforge),
    }
    sides: dict[str, Side] = {}
    pids: dict[str, int] = {}

    fm_port = port()
    fm_url = f"http://127.0.0.1:{fm_port}/mcp"
    env = {**os.environ, "FASTMCP_LOG_LEVEL": "WARNING"}
    env.pop("PYTHONPATH", None)
    argv = [str(fastmcp), str(SERVERS), "fastmcp-proxy", str(fm_port), upstream_url,
            issuer.internal_url, issuer.issuer, fm_url]  # fmt: skip
    pids["fastmcp-proxy"] = procs.start(pinned(argv, SERVER_CPU), env=env).pid
    wait_port(fm_port, timeout=60)
    sides["fastmcp-proxy"] = (fm_url, call("echo"), mcp_headers(issuer.token(fm_url)))

    cf_port = port()
    pid, side = _contextforge(procs, contextforge, cf_port, upstream_url, call)
    pids["contextforge"], sides["contextforge"] = pid, side
    return sides, pids, found


def refused_without_token(url: str, body: bytes, headers: dict[str, str]) -> int:
    """The status of the same call without its token: it must be 401 before a gateway's
    numbers mean anything."""
    bare = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    status = httpx2.post(url, content=body, headers=bare, timeout=30).status_code
    if status != 401:
        raise RuntimeError(f"{url} answers a call without a token with {status}")
    return status


def _cf_versions(python: Path) -> dict[str, str]:
    probe = "import importlib.metadata as m; print(m.version('mcp-contextforge-gateway'))"
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True)
    return {"mcp-contextforge-gateway": out.stdout.strip(), **versions(python)}


def _contextforge(
    procs: Processes, python: Path, port: int, upstream_url: str, call: Callable[[str], bytes]
) -> tuple[int, Side]:
    secret = secrets.token_urlsafe(48)
    workdir = procs.workdir / "contextforge"
    workdir.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{workdir / 'mcp.db'}",  # its default store
        "JWT_SECRET_KEY": secret,
        "AUTH_ENCRYPTION_SECRET": secrets.token_urlsafe(48),
        "PLATFORM_ADMIN_EMAIL": "admin@bench.example",
        "PLATFORM_ADMIN_PASSWORD": secrets.token_urlsafe(24),
        "BASIC_AUTH_USER": "benchadmin",
        "BASIC_AUTH_PASSWORD": secrets.token_urlsafe(24),
        "MCPGATEWAY_UI_ENABLED": "false",
        "MCPGATEWAY_ADMIN_API_ENABLED": "true",
        "SSRF_ALLOW_LOCALHOST": "true",  # the bench's upstream is on loopback
        # Its limiter stays on (in memory: no Redis), with a bucket no run can empty,
        # as the tools service's is in the bench.
        "RATE_LIMIT_MEDIUM_RPM": "100000000",
        "RATE_LIMIT_MEDIUM_BURST": "1000000",
        "TOOL_RATE_LIMIT": "100000000",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("PYTHONPATH", None)
    gateway = python.parent / "mcpgateway"
    argv = [str(gateway), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        pinned(argv, SERVER_CPU), env=env, cwd=workdir,
        stdout=subprocess.DEVNULL, stderr=(workdir / "log.txt").open("w"),
    )  # fmt: skip
    procs.procs.append(proc)
    wait_port(port, timeout=120)
    minted = subprocess.run(
        [str(python), "-m", "mcpgateway.utils.create_jwt_token", "-u", "admin@bench.example",
         "--admin", "--exp", "120", "--secret", secret],
        check=True, capture_output=True, text=True, env=env, cwd=workdir,
    )  # fmt: skip
    token = minted.stdout.strip().splitlines()[-1]
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    with httpx2.Client(timeout=60) as http:
        _ok(http.get(f"{base}/health"))
        upstream = {"name": "up", "url": upstream_url, "transport": "STREAMABLEHTTP"}
        _ok(http.post(f"{base}/gateways", headers=auth, json=upstream))
        tools: list[dict[str, Any]] = _ok(http.get(f"{base}/tools", headers=auth)).json()
        echo = next(t for t in tools if t.get("originalName") == "echo")
        virtual = {"server": {"name": "bench", "associated_tools": [echo["id"]]}}
        _ok(http.post(f"{base}/servers", headers=auth, json=virtual))
        server = _ok(http.get(f"{base}/servers", headers=auth)).json()[0]["id"]
    return proc.pid, (f"{base}/servers/{server}/mcp", call(echo["name"]), mcp_headers(token))


def _ok(reply: httpx2.Response) -> httpx2.Response:
    if reply.status_code >= 300:
        raise RuntimeError(
            f"ContextForge refused the set-up: {reply.status_code} {reply.text[:300]}"
        )
    return reply
