from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import httpx2
import pytest
from fastapi import FastAPI

from bastion_common.audit import AUDIT_STREAM, AuditEvent
from bastion_common.redis import create_redis
from bastion_common.service import create_service_app
from bastion_common.settings import ServiceSettings


def make_app(redis_url: str, tmp_path: str, name: str = "demo") -> FastAPI:
    settings = ServiceSettings(service_name=name, redis_url=redis_url, spool_dir=tmp_path)
    app = create_service_app(settings, title="demo")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail " + secrets.token_hex(4))

    return app


@pytest.fixture
async def client(redis_url: str, tmp_path: str) -> AsyncIterator[httpx2.AsyncClient]:
    app = make_app(redis_url, str(tmp_path))
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t") as c,
    ):
        yield c


@pytest.mark.anyio
async def test_health_readiness_and_metrics_answer(client: httpx2.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok"}
    metrics = await client.get("/metrics")
    assert "bastion_http_requests_total" in metrics.text


@pytest.mark.anyio
async def test_readiness_fails_when_redis_does_not_answer(tmp_path: str) -> None:
    app = make_app("redis://127.0.0.1:1/0", str(tmp_path))
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t") as c,
    ):
        ready = await c.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"


@pytest.mark.anyio
async def test_request_id_is_taken_from_the_caller_or_made(client: httpx2.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/healthz", headers={"X-Request-ID": "bad value!"})
    assert made.headers["x-request-id"] != "bad value!"
    assert len(made.headers["x-request-id"]) == 32


@pytest.mark.anyio
async def test_an_unhandled_error_shows_no_stack_trace(client: httpx2.AsyncClient) -> None:
    response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": "server_error", "error_description": "internal error"}
    assert "secret detail" not in response.text
    assert "Traceback" not in response.text


@pytest.mark.anyio
async def test_a_starting_service_announces_itself_on_the_audit_stream(
    redis_url: str, tmp_path: str
) -> None:
    app = make_app(redis_url, str(tmp_path), name="auth")
    async with app.router.lifespan_context(app):
        pass
    redis = create_redis(redis_url)
    try:
        entries = await redis.xrange(AUDIT_STREAM)
    finally:
        await redis.aclose()
    events = [AuditEvent.from_stream_fields(fields) for _id, fields in entries]
    assert [(e.type, e.service) for e in events] == [("service.started", "auth")]
