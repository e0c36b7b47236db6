"""Test helpers: settings, an in-process app with a real Redis, a client that walks the
authorization code flow by posting the forms as a browser would, and audit reading."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
from fastapi import FastAPI
from redis.asyncio import Redis

from bastion_auth.app import create_app
from bastion_auth.deps import AuthContext
from bastion_auth.settings import Settings
from bastion_common.audit import AuditEvent

ISSUER = "http://localhost:8001"
TOOLS = "http://localhost:8003/mcp"
KEYS = "http://localhost:8002"
AUDIT = "http://localhost:8004"
ADMIN = "http://localhost:8001/admin"
REDIRECT = "http://127.0.0.1:53682/callback"
TOOLS_SECRET = "t00ls-" + "Zq8xK2vLp9Wm4Rt7Yb3Nc6Hd1Fg5Js0Ae"
ADMIN_PASSWORD = "Adm1n-pass-Xy7Qw9Er"


def make_settings(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "spool_dir": str(tmp_path / "spool"),
        "key_encryption_key": "kek-" + "Hq7Lp2Wx9Zm4Rt6Yb1Nc8Vd3Fg5Js0Ae",
        "session_secret": "ses-" + "Pw4Zr8Lq1Xm6Tn3Vb9Hc2Kd7Fg5Js0Ae",
        "public_url": ISSUER,
        "tools_client_secret": TOOLS_SECRET,
        "bootstrap_admin_username": "admin",
        "bootstrap_admin_password": ADMIN_PASSWORD,
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
        "argon2_parallelism": 1,
        "key_publish_lead_seconds": 0,
    }
    values.update(overrides)
    return Settings(**values)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class Harness:
    app: FastAPI
    client: httpx2.AsyncClient
    redis: Redis

    @property
    def ctx(self) -> AuthContext:
        ctx: AuthContext = self.app.state.bastion.extra["auth"]
        return ctx

    async def register(self, **meta: Any) -> str:
        body = {
            "client_name": "Test client",
            "application_type": "native",
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
            **meta,
        }
        response = await self.client.post("/register", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["client_id"])

    async def authorize(self, client_id: str, **params: str | None) -> httpx2.Response:
        query: dict[str, str] = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "code_challenge": params.pop("code_challenge", None) or pkce_pair()[1],
            "code_challenge_method": "S256",
            "resource": TOOLS,
            "state": "st-123",
        }
        for key, value in params.items():
            if value is None:
                query.pop(key, None)
            else:
                query[key] = value
        return await self.client.get("/authorize", params=query)

    async def login_and_consent(
        self,
        client_id: str,
        *,
        username: str = "admin",
        password: str = ADMIN_PASSWORD,
        decision: str = "allow",
        **params: str | None,
    ) -> dict[str, str]:
        page = await self.authorize(client_id, **params)
        assert page.status_code == 200, page.text
        if 'name="password"' in page.text:
            page = await self.client.post(
                "/login",
                data={**hidden_inputs(page.text), "username": username, "password": password},
            )
            assert page.status_code == 200, page.text
        done = await self.client.post(
            "/consent", data={**hidden_inputs(page.text), "decision": decision}
        )
        assert done.status_code == 302, done.text
        location = done.headers["location"]
        assert location.startswith(REDIRECT)
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    async def code(
        self, client_id: str, verifier_challenge: tuple[str, str], **params: str | None
    ) -> str:
        result = await self.login_and_consent(
            client_id, code_challenge=verifier_challenge[1], **params
        )
        return result["code"]

    async def exchange(
        self, client_id: str, code: str, verifier: str, **extra: str
    ) -> httpx2.Response:
        data = {
            "grant_type": "authorization_code",
            "client_id": client_id,
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "resource": TOOLS,
            **extra,
        }
        return await self.client.post("/token", data=data)

    async def tokens(self, client_id: str | None = None, **params: str | None) -> dict[str, Any]:
        client_id = client_id or await self.register()
        pair = pkce_pair()
        code = await self.code(client_id, pair, **params)
        extra = {"resource": params["resource"]} if params.get("resource") else {}
        response = await self.exchange(client_id, code, pair[0], **extra)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        body["client_id"] = client_id
        return body

    async def refresh(self, client_id: str, refresh_token: str, **extra: str) -> httpx2.Response:
        return await self.client.post(
            "/token",
            data={
                "grant_type": "refresh_token",
                "client_id": client_id,
                "refresh_token": refresh_token,
                **extra,
            },
        )

    async def all_events(self) -> list[dict[str, Any]]:
        """Every audit event in the stream now, oldest first."""
        return [
            json.loads(e.model_dump_json())
            for _id, fields in await self.redis.xrange("audit:events")
            for e in AuditEvent.all_from_stream_fields(fields)
        ]

    async def events(self, type_: str, count: int = 1, timeout: float = 5) -> list[dict[str, Any]]:
        """Audit events of `type_` once at least `count` are in the stream."""
        with anyio.fail_after(timeout):
            while True:
                found = []
                for _id, fields in await self.redis.xrange("audit:events"):
                    for parsed in AuditEvent.all_from_stream_fields(fields):
                        event = json.loads(parsed.model_dump_json())
                        if event["type"] == type_:
                            found.append(event)
                if len(found) >= count:
                    return found
                await anyio.sleep(0.05)


def hidden_inputs(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))


@asynccontextmanager
async def harness(settings: Settings) -> AsyncIterator[Harness]:
    app = create_app(settings)
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx2.AsyncClient(transport=transport, base_url=ISSUER) as client:
            try:
                yield Harness(app, client, redis)
            finally:
                await redis.aclose()
