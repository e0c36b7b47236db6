"""Helpers for the tools service tests: the stand-in upstream server, token minting,
raw MCP requests and audit-stream reading. Fixtures are in conftest.py.

The stand-in is a Starlette app served by uvicorn on a loopback port in a thread, so
the service under test talks real HTTP to it and a test can stop it (issuer down).
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.audit_stream import audit_events as audit_events
from tests.audit_stream import wait_for_event as wait_for_event

AUTH_ISSUER = "https://auth.test"
KEYS_ISSUER = "https://keys.test"
PUBLIC_URL = "http://localhost:8003"
RESOURCE = f"{PUBLIC_URL}/mcp"
AUDIT_RESOURCE = "https://audit.test"
CLIENT_SECRET = secrets.token_urlsafe(40)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "alg": "ES256", "use": "sig"}


@dataclass
class Upstreams:
    """State of the stand-in auth / keys / audit server."""

    port: int
    auth_keys: list[SigningKey] = field(default_factory=list)
    keys_keys: list[SigningKey] = field(default_factory=list)
    api_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    issued: dict[str, str] = field(default_factory=dict)  # service token -> resource
    seen_authorization: list[tuple[str, str]] = field(default_factory=list)
    jwks_fetches: int = 0
    introspections: int = 0
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        async def auth_jwks(_: Request) -> JSONResponse:
            self.jwks_fetches += 1
            return JSONResponse({"keys": [k.jwk() for k in self.auth_keys]})

        async def keys_jwks(_: Request) -> JSONResponse:
            return JSONResponse({"keys": [k.jwk() for k in self.keys_keys]})

        async def token(request: Request) -> JSONResponse:
            form = await request.form()
            if (
                form.get("grant_type") != "client_credentials"
                or form.get("client_id") != "bastion-tools"
                or form.get("client_secret") != CLIENT_SECRET
            ):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            value = f"svc-{secrets.token_hex(8)}"
            self.issued[value] = str(form.get("resource"))
            return JSONResponse({"access_token": value, "token_type": "Bearer", "expires_in": 300})

        def bearer(request: Request, resource: str) -> bool:
            header = request.headers.get("authorization", "")
            self.seen_authorization.append((request.url.path, header))
            return self.issued.get(header.removeprefix("Bearer ")) == resource

        async def users(request: Request) -> JSONResponse:
            if not bearer(request, f"{AUTH_ISSUER}/admin"):
                return JSONResponse({"error": "invalid_token"}, status_code=401)
            return JSONResponse(
                [
                    {
                        "username": "alice",
                        "roles": ["user"],
                        "disabled": False,
                        "password_hash": "$argon2id$v=19$secret",
                    }
                ]  # fmt: skip
            )

        async def report(request: Request) -> JSONResponse:
            if not bearer(request, AUDIT_RESOURCE):
                return JSONResponse({"error": "invalid_token"}, status_code=401)
            return JSONResponse({"range": request.query_params.get("range"), "events": 3})

        async def introspect(request: Request) -> JSONResponse:
            if not bearer(request, KEYS_ISSUER):
                return JSONResponse({"error": "invalid_token"}, status_code=401)
            self.introspections += 1
            body = await request.json()
            found = self.api_keys.get(str(body.get("api_key")))
            return JSONResponse({"active": True, **found} if found else {"active": False})

        return Starlette(
            routes=[
                Route("/jwks.json", auth_jwks),
                Route("/keys/jwks.json", keys_jwks),
                Route("/token", token, methods=["POST"]),
                Route("/admin/users", users),
                Route("/audit/v1/report", report),
                Route("/keys/v1/introspect", introspect, methods=["POST"]),
            ]
        )

    def start(self) -> None:
        config = uvicorn.Config(
            self.app(), host="127.0.0.1", port=self.port, log_level="error", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stand-in server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
            self.server = None
            self.thread = None


@dataclass
class Minter:
    upstreams: Upstreams

    def token(
        self,
        sub: str = "alice",
        *,
        roles: list[str] | None = None,
        scope: str = "weather:read",
        aud: Any = RESOURCE,
        iss: str = AUTH_ISSUER,
        expires_in: int = 300,
        not_before: int | None = None,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        jti: str | None = None,
        client_id: str = "test-client",
        drop: tuple[str, ...] = (),
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": iss, "sub": sub, "aud": aud, "iat": now, "nbf": now if not_before is None
            else not_before, "exp": now + expires_in, "jti": jti or uuid.uuid4().hex,
            "client_id": client_id, "scope": scope, "roles": roles or ["user"],
        }  # fmt: skip
        for name in drop:
            claims.pop(name, None)
        signer = key or (
            self.upstreams.keys_keys[0] if iss == KEYS_ISSUER else self.upstreams.auth_keys[0]
        )
        return jwt.encode(
            claims,
            signer.private,
            algorithm="ES256",
            headers={"typ": "at+jwt", "kid": signer.kid, **(headers or {})},
        )


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app, client=("10.0.0.7", 40000)), base_url=PUBLIC_URL
        ) as client,
    ):
        yield client


MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-06-18",
}


def rpc(method: str, params: dict[str, Any] | None = None, id_: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        body["params"] = params
    return body


async def post(
    client: httpx2.AsyncClient,
    token: str | None,
    body: Any,
    *,
    session: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx2.Response:
    h = dict(MCP_HEADERS)
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if session:
        h["Mcp-Session-Id"] = session
    h.update(headers or {})
    return await client.post("/mcp", json=body, headers=h)


async def open_session(client: httpx2.AsyncClient, token: str) -> str:
    """Initialize handshake (protocol 2025-06-18); returns the session id."""
    reply = await post(client, token, rpc("initialize", {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}))  # fmt: skip
    assert reply.status_code == 200, reply.text
    session = reply.headers["mcp-session-id"]
    note = await post(client, token, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                      session=session)  # fmt: skip
    assert note.status_code == 202, note.text
    return session


async def call_tool(
    client: httpx2.AsyncClient, token: str, session: str, name: str, arguments: dict[str, Any]
) -> httpx2.Response:
    return await post(client, token, rpc("tools/call", {"name": name, "arguments": arguments}),
                      session=session)  # fmt: skip


def rate_limit(headers: httpx2.Headers, name: str = "ratelimit") -> dict[str, int]:
    """The parameters of a RateLimit or RateLimit-Policy field (one item, "principal"):
    `RateLimit: "principal";r=5;t=3` gives {"r": 5, "t": 3}."""
    item, *params = headers[name].split(";")
    assert item == '"principal"', headers[name]
    return {key: int(value) for key, value in (param.split("=", 1) for param in params)}
