"""Helpers for the keys service tests: a stand-in auth (its ES256 key and JWKS served
over an ASGI transport), token minting, the app in-process, audit-stream reading."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion_common.tokens import TokenValidator, TrustedIssuer
from tests.audit_stream import audit_events as audit_events
from tests.audit_stream import wait_for_event as wait_for_event

AUTH_ISSUER = "http://localhost:8001"
AUTH_INTERNAL = "http://auth.internal"
KEYS_URL = "http://localhost:8002"
TOOLS_RESOURCE = "http://localhost:8003/mcp"
AUDIT_RESOURCE = "http://localhost:8004"
CLIENT_IP = "10.0.0.9"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
API_KEY_TYPE = "urn:mcp-secure:api-key"
PREMIUM = "weather:read weather:write files:read files:write"
ADMIN = "weather:read weather:write files:read files:write files:delete admin:users metrics:view"


@dataclass
class StandInAuth:
    """auth as the keys service sees it: an ES256 key and the JWKS that publishes it."""

    kid: str = "auth-1"
    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def app(self) -> Starlette:
        async def jwks(_: Request) -> JSONResponse:
            data = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
            return JSONResponse({"keys": [{**data, "kid": self.kid, "alg": "ES256", "use": "sig"}]})

        return Starlette(routes=[Route("/jwks.json", jwks)])

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=self.app()), base_url=AUTH_INTERNAL
        )

    def token(
        self,
        sub: str = "alice",
        *,
        scope: str = PREMIUM,
        roles: list[str] | None = None,
        aud: str = KEYS_URL,
        client_id: str = "cli",
        jti: str | None = None,
        expires_in: int = 300,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": AUTH_ISSUER, "sub": sub, "aud": aud, "iat": now, "nbf": now,
            "exp": now + expires_in, "jti": jti or uuid.uuid4().hex, "client_id": client_id,
            "scope": scope, "roles": ["premium"] if roles is None else roles,
        }  # fmt: skip
        return jwt.encode(
            claims, self.private, algorithm="ES256", headers={"typ": "at+jwt", "kid": self.kid}
        )

    def service_token(self, client_id: str = "bastion-tools") -> str:
        return self.token(client_id, scope="", roles=[], client_id=client_id)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def serve(app: FastAPI, ip: str = CLIENT_IP) -> AsyncIterator[httpx2.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app, client=(ip, 40000)), base_url=KEYS_URL
        ) as client,
    ):
        yield client


def tools_validator(app: FastAPI, audience: str = TOOLS_RESOURCE) -> TokenValidator:
    """A validator configured as the tools server's: trusts the keys issuer, its own URI."""
    return TokenValidator(
        [TrustedIssuer(KEYS_URL, jwks_url=f"{KEYS_URL}/jwks.json", algorithms=("ES256",))],
        audience=audience,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=KEYS_URL),
    )


async def create_key(
    client: httpx2.AsyncClient, token: str, permissions: list[str], **extra: Any
) -> dict[str, Any]:
    reply = await client.post(
        "/v1/keys",
        json={"name": extra.pop("name", "ci"), "permissions": permissions, **extra},
        headers=bearer(token),
    )
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def exchange(
    client: httpx2.AsyncClient, api_key: str, resource: str = TOOLS_RESOURCE, **extra: str
) -> httpx2.Response:
    return await client.post(
        "/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": api_key,
            "subject_token_type": API_KEY_TYPE,
            "resource": resource,
            **extra,
        },
    )


def random_key() -> str:
    return "mcp_" + secrets.token_urlsafe(32)
