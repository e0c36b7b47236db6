"""The peers `bench/peers.py` compares the tools service with, each served alone.

Runs inside a peer's own virtualenv (bench/.peers/NAME, made by peers.py), so it imports
nothing from this repository: only the peer's own packages, uvicorn, uvloop and redis.

- `sdk`: the `mcp` SDK's MCPServer with its own bearer auth: a `TokenVerifier` that
  checks the ES256 JWT (PyJWT) against the JWKS fetched once at start-up, and the SDK's
  auth middleware (`AuthSettings`: required scope, RFC 8707 resource check). A token is
  verified once and its answer kept until it expires, as the tools service does, so
  the two differ by what they enforce, not by how often they verify a signature;
- `sdk-every-call`: the same, verifying every call in full (what the SDK's examples do);
- `fastmcp`: FastMCP with its `JWTVerifier` (same JWKS, issuer, audience, scope) and its
  `RateLimitingMiddleware` keyed by the token's client, with a bucket no run can empty.

Both serve the same tool as the tools service (`get_weather(city)`: one Redis GET of the
latest observation, the same key) over streamable HTTP at /mcp, stateless with JSON
responses, under uvicorn with uvloop and the settings the tools service uses, and
freeze what start-up made for the garbage collector as it does (so the comparison is of
the security layers, not of that).

- `fastmcp-proxy` (for bench/gateway.py): FastMCP's `create_proxy` of an upstream MCP
  server behind its `JWTVerifier`; its third argument is the upstream's URL.

    python bench/peer_servers.py sdk|sdk-every-call|fastmcp PORT REDIS_URL JWKS_URL ISSUER AUDIENCE
    python bench/peer_servers.py fastmcp-proxy PORT UPSTREAM_URL JWKS_URL ISSUER AUDIENCE
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
import unicodedata
from collections.abc import AsyncIterator
from typing import Any
from urllib.request import urlopen

SCOPE = "weather:read"


def weather_key(city: str) -> str:
    """The key the tools service reads (bastion_tools.store.weather_key of city_key)."""
    return "weather:obs:" + " ".join(unicodedata.normalize("NFKC", city).casefold().split())


def weather_reader(redis_url: str) -> Any:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)

    async def latest(city: str) -> dict[str, Any] | None:
        raw = await redis.get(weather_key(city))
        return None if raw is None else dict(json.loads(raw))

    return latest


def sdk_app(
    port: int, redis_url: str, jwks_url: str, issuer: str, audience: str, *, cache: bool = True
) -> Any:
    import jwt
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver import MCPServer

    with urlopen(jwks_url, timeout=10) as reply:  # noqa: S310 - the bench's own loopback JWKS
        keys = {key.key_id: key.key for key in jwt.PyJWKSet.from_json(reply.read().decode()).keys}

    verified: dict[str, AccessToken] = {}

    class JwtVerifier:
        """What an SDK user writes for JWT access tokens. The SDK's middleware checks
        `expires_at` on every call, so a kept answer stops working when the token expires."""

        async def verify_token(self, token: str) -> AccessToken | None:
            known = verified.get(token)
            if known is not None:
                return known
            try:
                key = keys[jwt.get_unverified_header(token).get("kid")]
                # The peer's own validator stands in for ours: bastion_common.tokens is
                # what it is compared with, so it cannot be used here.
                claims = jwt.decode(  # noqa: TID251
                    token, key, algorithms=["ES256"], audience=audience, issuer=issuer,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )  # fmt: skip
            except (jwt.PyJWTError, KeyError):
                return None
            access = AccessToken(
                token=token,
                client_id=str(claims.get("client_id", claims["sub"])),
                scopes=str(claims.get("scope", "")).split(),
                expires_at=int(claims["exp"]),
                resource=audience,
                subject=str(claims["sub"]),
            )
            if cache:
                if len(verified) > 10_000:  # a bound, not an eviction policy
                    verified.clear()
                verified[token] = access
            return access

    mcp: MCPServer[object] = MCPServer(
        name="sdk-bearer",
        token_verifier=JwtVerifier(),
        auth=AuthSettings(
            issuer_url=issuer,  # pydantic parses the URLs
            resource_server_url=audience,
            required_scopes=[SCOPE],
            validate_token_resource=True,
        ),
    )
    latest = weather_reader(redis_url)

    @mcp.tool()
    async def get_weather(city: str) -> dict[str, Any]:
        """Latest stored weather observation for a city."""
        return {"city": city, "observation": await latest(city)}

    return mcp.streamable_http_app(json_response=True, stateless_http=True)


def fastmcp_app(port: int, redis_url: str, jwks_url: str, issuer: str, audience: str) -> Any:
    from fastmcp import FastMCP
    from fastmcp.server.auth.providers.jwt import JWTVerifier
    from fastmcp.server.dependencies import get_access_token
    from fastmcp.server.middleware.middleware import MiddlewareContext
    from fastmcp.server.middleware.rate_limiting import RateLimitingMiddleware

    verifier = JWTVerifier(
        jwks_uri=jwks_url, issuer=issuer, audience=audience, algorithm="ES256",
        required_scopes=[SCOPE], base_url=f"http://localhost:{port}",
    )  # fmt: skip
    mcp = FastMCP("fastmcp-peer", auth=verifier)

    def client_of(_context: MiddlewareContext[Any]) -> str:
        token = get_access_token()
        return token.client_id if token is not None else "anonymous"

    # Per client, like the tools service's bucket per principal; never empties in a run.
    mcp.add_middleware(
        RateLimitingMiddleware(
            max_requests_per_second=1e6, burst_capacity=10**9, get_client_id=client_of
        )
    )
    latest = weather_reader(redis_url)

    @mcp.tool
    async def get_weather(city: str) -> dict[str, Any]:
        """Latest stored weather observation for a city."""
        return {"city": city, "observation": await latest(city)}

    return mcp.http_app(path="/mcp", json_response=True, stateless_http=True)


def fastmcp_proxy_app(port: int, upstream: str, jwks_url: str, issuer: str, audience: str) -> Any:
    """FastMCP's `create_proxy` of `upstream` behind its `JWTVerifier` (bench/gateway.py)."""
    from fastmcp.server import create_proxy
    from fastmcp.server.auth.providers.jwt import JWTVerifier

    verifier = JWTVerifier(
        jwks_uri=jwks_url, issuer=issuer, audience=audience, algorithm="ES256",
        required_scopes=[SCOPE], base_url=f"http://localhost:{port}",
    )  # fmt: skip
    proxy = create_proxy(upstream, name="fastmcp-proxy", auth=verifier)
    return proxy.http_app(path="/mcp", json_response=True, stateless_http=True)


def serve(app: Any, port: int) -> None:
    import uvicorn

    started = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with started(app) as state:
            gc.collect()  # as every served bastion process does once started
            gc.freeze()
            yield state

    app.router.lifespan_context = lifespan
    for name in ("mcp", "fastmcp"):  # no log line per request, as in the tools service
        logging.getLogger(name).setLevel(logging.WARNING)
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", log_level="warning",
                access_log=False, proxy_headers=False, server_header=False)  # fmt: skip


def build(peer: str, port: int, redis_url: str, jwks_url: str, issuer: str, audience: str) -> Any:
    if peer == "fastmcp-proxy":  # the REDIS_URL argument is the upstream's URL
        return fastmcp_proxy_app(port, redis_url, jwks_url, issuer, audience)
    if peer == "fastmcp":
        return fastmcp_app(port, redis_url, jwks_url, issuer, audience)
    if peer in ("sdk", "sdk-every-call"):
        return sdk_app(port, redis_url, jwks_url, issuer, audience, cache=peer == "sdk")
    raise SystemExit(f"no peer {peer!r}")


if __name__ == "__main__":
    peer, port, redis_url, jwks_url, issuer, audience = sys.argv[1:7]
    serve(build(peer, int(port), redis_url, jwks_url, issuer, audience), int(port))
