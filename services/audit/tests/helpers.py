"""Helpers for the audit tests: events, test tokens (ES256 key generated here, its JWKS
served over an ASGI transport), a Redis with persistence for fault tests."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion_common.audit import AuditEvent
from tests.redis_process import RedisProcess

AUTH_ISSUER = "https://auth.test"
AUDIT_RESOURCE = "https://audit.test"
JWKS_BASE = "http://auth.internal"
CHECKPOINT_KEY = secrets.token_urlsafe(40)


def event(
    type_: str = "tool.called",
    outcome: str = "success",
    *,
    principal: str | None = "alice",
    ip: str | None = "10.0.0.1",
    tool: str | None = None,
    at: datetime | None = None,
    **details: Any,
) -> AuditEvent:
    return AuditEvent(
        type=type_,
        service="test",
        outcome=outcome,  # type: ignore[arg-type]
        principal=principal,
        ip=ip,
        tool=tool,
        time=at or datetime.now(UTC),
        details=details,
    )


@dataclass
class Issuer:
    """A stand-in for auth: an ES256 key, its JWKS (ASGI), and a token minter."""

    kid: str = "test-key-1"
    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def jwks_app(self) -> Starlette:
        async def jwks(_: Request) -> JSONResponse:
            data = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
            return JSONResponse({"keys": [{**data, "kid": self.kid, "alg": "ES256", "use": "sig"}]})

        return Starlette(routes=[Route("/jwks.json", jwks)])

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.jwks_app()))

    def token(
        self,
        sub: str = "admin",
        *,
        scope: str = "metrics:view",
        aud: str = AUDIT_RESOURCE,
        iss: str = AUTH_ISSUER,
        lifetime: int = 300,
        jti: str | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": iss, "sub": sub, "aud": aud, "exp": now + lifetime, "iat": now, "nbf": now,
            "jti": jti or uuid.uuid4().hex, "client_id": "test-client", "scope": scope,
            "roles": ["admin"],
        }  # fmt: skip
        return jwt.encode(
            claims,
            key or self.private,
            algorithm="ES256",
            headers={"typ": "at+jwt", "kid": self.kid},
        )


class PersistentRedis(RedisProcess):
    """A redis-server with AOF on (as in deploy/redis.Dockerfile): stopping it keeps data."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, persistent=True)


def hours_ago(now: datetime, hours: float) -> datetime:
    return now - timedelta(hours=hours)
