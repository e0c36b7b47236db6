"""Token endpoint throughput of the auth service, and the cost of one argon2id hash.

The app runs in this process (ASGI transport, no network), pinned to one core, against a
real redis-server started here (its own process, on another core when there is one).
Password hashing is excluded from the token numbers: codes are minted directly from the
token service, as the consent step would, then redeemed at POST /token.

- authorization_code: N sequential code exchanges (PKCE verify, RFC 8707 resource,
  ES256 signing, refresh token + family bookkeeping) -> tokens/s
- refresh_token: a chain of N rotations (Lua rotation, ES256 signing) -> tokens/s
- baseline: GET /jwks.json through the same app and transport (no Redis), the floor
- argon2id: ms per hash with the service's default parameters (64 MiB, t=3, p=4)

    .venv/bin/python bench/auth_tokens.py [--requests 2000] [--hashes 20]

Writes bench/results/auth_tokens.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import secrets
import time

import httpx2
from harness import SERVER_CPU, Processes, pin_self, write_result

from bastion_auth.app import create_app
from bastion_auth.deps import AuthContext
from bastion_auth.registration import client_from_metadata
from bastion_auth.settings import Settings
from bastion_common.logging import configure_logging

ISSUER = "http://localhost:8001"
TOOLS = "http://localhost:8003/mcp"
REDIRECT = "http://127.0.0.1:53682/callback"


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


async def _bench(redis_url: str, requests: int, hashes: int, spool: str) -> dict[str, float]:
    settings = Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        spool_dir=spool,
        key_encryption_key=secrets.token_urlsafe(48),  # type: ignore[arg-type]
        session_secret=secrets.token_urlsafe(48),  # type: ignore[arg-type]
        public_url=ISSUER,
        log_level="WARNING",
    )
    configure_logging("auth", "WARNING")
    app = create_app(settings)
    results: dict[str, float] = {}
    async with app.router.lifespan_context(app):
        ctx: AuthContext = app.state.bastion.extra["auth"]
        await ctx.users.create("bench", secrets.token_urlsafe(16), ["premium"])
        client = client_from_metadata(
            {
                "application_type": "native",
                "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"],
            }
        )
        await ctx.clients.save(client)
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url=ISSUER) as http:
            # Floor of this harness: the same app and transport answering with no Redis.
            start = time.perf_counter()
            for _ in range(requests):
                await http.get("/jwks.json")
            results["baseline_jwks_requests_per_s"] = requests / (time.perf_counter() - start)
            codes = []
            for _ in range(requests):
                verifier, challenge = _pkce()
                code = await ctx.tokens.create_code(
                    {
                        "client_id": client.client_id,
                        "redirect_uri": REDIRECT,
                        "code_challenge": challenge,
                        "resource": TOOLS,
                        "scopes": ["weather:read", "files:read"],
                        "sub": "bench",
                    }
                )
                codes.append((code, verifier))
            start = time.perf_counter()
            refresh = ""
            for code, verifier in codes:
                response = await http.post(
                    "/token",
                    data={
                        "grant_type": "authorization_code",
                        "client_id": client.client_id,
                        "code": code,
                        "redirect_uri": REDIRECT,
                        "code_verifier": verifier,
                        "resource": TOOLS,
                    },
                )
                assert response.status_code == 200, response.text
                refresh = response.json()["refresh_token"]
            results["authorization_code_tokens_per_s"] = requests / (time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(requests):
                response = await http.post(
                    "/token",
                    data={
                        "grant_type": "refresh_token",
                        "client_id": client.client_id,
                        "refresh_token": refresh,
                    },
                )
                assert response.status_code == 200, response.text
                refresh = response.json()["refresh_token"]
            results["refresh_token_tokens_per_s"] = requests / (time.perf_counter() - start)
        hasher = ctx.users.hasher
        start = time.perf_counter()
        for _ in range(hashes):
            hasher.hash("correct horse battery staple")
        results["argon2id_ms_per_hash"] = (time.perf_counter() - start) / hashes * 1000
        results["argon2id_params"] = (
            f"m={hasher.memory_cost}KiB t={hasher.time_cost} p={hasher.parallelism}"  # type: ignore[assignment]
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--hashes", type=int, default=20)
    args = parser.parse_args()
    pin_self(SERVER_CPU)
    with Processes("auth-bench-") as procs:
        _, redis_url = procs.redis()
        results = asyncio.run(
            _bench(redis_url, args.requests, args.hashes, str(procs.workdir / "spool"))
        )
    write_result("auth_tokens", results)
    print(json.dumps(results, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
