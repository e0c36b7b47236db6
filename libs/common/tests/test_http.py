from __future__ import annotations

import gc
import logging
import secrets
from collections.abc import AsyncIterator

import httpx2
import pytest
import structlog
from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send
from structlog.testing import LogCapture

from bastion_common import http as http_module
from bastion_common import logging as bastion_logging
from bastion_common.audit import AUDIT_STREAM, AuditEvent
from bastion_common.http import HTTP_REQUESTS
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
    events = [e for _id, fields in entries for e in AuditEvent.all_from_stream_fields(fields)]
    assert [(e.type, e.service) for e in events] == [("service.started", "auth")]


def _hot_app(redis_url: str, tmp_path: str) -> tuple[FastAPI, list[str]]:
    """A service whose /hot path is served before FastAPI's stack (and can be made to fail)."""
    seen: list[str] = []

    async def hot(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        if b"boom" in scope.get("query_string", b""):
            raise RuntimeError("secret detail " + secrets.token_hex(4))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"hot"})

    settings = ServiceSettings(service_name="demo", redis_url=redis_url, spool_dir=tmp_path)
    app = create_service_app(settings, title="demo", hot_routes={"/hot": hot})
    return app, seen


def _requests_counted(route: str, status: str) -> float:
    value = 0.0
    for metric in HTTP_REQUESTS.collect():
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_total")
                and labels.get("route") == route
                and labels.get("status") == status
            ):
                value += sample.value
    return value


@pytest.mark.anyio
async def test_a_hot_route_keeps_the_request_context_and_hides_its_errors(
    redis_url: str, tmp_path: str
) -> None:
    app, seen = _hot_app(redis_url, str(tmp_path))
    before_ok, before_error = _requests_counted("/hot", "200"), _requests_counted("/hot", "500")
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t") as c,
    ):
        ok = await c.get("/hot", headers={"X-Request-ID": "hot-1"})
        failed = await c.get("/hot?boom")
        other = await c.get("/healthz")  # every other path still goes through FastAPI
        near_miss = await c.get("/hot/")  # not the hot path: FastAPI answers it
    assert (ok.status_code, ok.text, ok.headers["x-request-id"]) == (200, "hot", "hot-1")
    assert failed.status_code == 500
    assert failed.json() == {"error": "server_error", "error_description": "internal error"}
    assert "secret detail" not in failed.text and "x-request-id" in failed.headers
    assert other.json() == {"status": "ok"}
    assert near_miss.status_code == 404
    assert seen == ["/hot", "/hot"]
    # Metrics carry the hot path's own label, not "unmatched".
    assert _requests_counted("/hot", "200") == before_ok + 1
    assert _requests_counted("/hot", "500") == before_error + 1


@pytest.mark.anyio
async def test_a_served_process_freezes_what_start_up_made(redis_url: str, tmp_path: str) -> None:
    quiet, served = make_app(redis_url, str(tmp_path)), make_app(redis_url, str(tmp_path))
    served.state.freeze_gc = True  # what run() sets before uvicorn starts
    gc.unfreeze()
    try:
        async with quiet.router.lifespan_context(quiet):
            assert gc.get_freeze_count() == 0
        async with served.router.lifespan_context(served):
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.anyio
@pytest.mark.parametrize(("level", "logged"), [(logging.INFO, True), (logging.WARNING, False)])
async def test_request_line_follows_the_configured_level(
    redis_url: str, tmp_path: str, monkeypatch: pytest.MonkeyPatch, level: int, logged: bool
) -> None:
    capture = LogCapture()
    monkeypatch.setattr(bastion_logging, "_configured_level", level)
    monkeypatch.setattr(
        http_module,
        "log",
        structlog.wrap_logger(
            None, processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(level)
        ),
    )
    app = make_app(redis_url, str(tmp_path))
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t") as c,
    ):
        answer = await c.get("/missing", headers={"X-Request-ID": "req-7"})
    assert answer.status_code == 404
    requests = [e for e in capture.entries if e["event"] == "http.request"]
    if logged:
        assert [(e["path"], e["status"]) for e in requests] == [("/missing", 404)]
    else:
        assert requests == []


@pytest.mark.anyio
async def test_readiness_reports_redis_memory_and_fails_under_pressure(
    client: httpx2.AsyncClient, redis_url: str
) -> None:
    # deploy/redis runs with maxmemory and noeviction: near full, writes will be refused.
    admin = Redis.from_url(redis_url)
    used = int((await admin.info("memory"))["used_memory"])
    try:
        await admin.config_set("maxmemory", used * 10)
        roomy = await client.get("/readyz")
        assert roomy.status_code == 200
        assert roomy.json()["checks"]["redis"].startswith("ok (memory ")
        await admin.config_set("maxmemory", int(used * 1.05))
        full = await client.get("/readyz")
        assert full.status_code == 503
        assert full.json()["checks"]["redis"].startswith("unavailable (MemoryPressure: memory ")
    finally:
        await admin.config_set("maxmemory", 0)
        await admin.aclose()
