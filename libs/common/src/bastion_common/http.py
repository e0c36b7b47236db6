"""What every service's HTTP side shares: request context, ops routes, metrics.

- `RequestContextMiddleware` (pure ASGI): takes `X-Request-ID` from the request (or
  makes one), binds it to the logs, returns it on the response, logs one
  `http.request` line and records Prometheus metrics.
- `ops_router()`: `GET /healthz` (the process answers), `GET /readyz` (its dependencies
  answer: Redis at least) and `GET /metrics` (Prometheus text format).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from redis.asyncio import Redis
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion_common.logging import (
    get_logger,
    logs_at,
    new_id,
    request_id_var,
    valid_request_id,
)

__all__ = [
    "RESPONSE_HEADERS_KEY",
    "RESPONSE_STATUS_KEY",
    "MemoryPressure",
    "NotReady",
    "ReadinessCheck",
    "RequestContextMiddleware",
    "ops_router",
    "redis_check",
]

log = get_logger(__name__)

HTTP_REQUESTS = Counter(
    "bastion_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "bastion_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RESPONSE_HEADERS_KEY = "bastion.response_headers"
"""Scope key of the list of raw headers `RequestContextMiddleware` adds to the answer."""
RESPONSE_STATUS_KEY = "bastion.response_status"
"""Scope key where `RequestContextMiddleware` notes the answer's status once it is sent."""


_SERVER_ERROR = b'{"error":"server_error","error_description":"internal error"}'
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

# A check raises when its dependency does not answer (not ready), or returns None ("ok")
# or a status to report that does not make the service unready (an upstream MCP server
# that is down leaves the built-in tools serving; Redis' memory use).
ReadinessCheck = Callable[[], Awaitable[str | None]]

MEMORY_PRESSURE = 0.9  # share of Redis' maxmemory at which a service reports not ready


def _route_label(scope: Scope, fixed: str | None = None) -> str:
    if fixed is not None:
        return fixed
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths share one label so that scanners cannot blow up metric cardinality.
    return str(path) if path else "unmatched"


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@functools.lru_cache(maxsize=1024)
def _request_metrics(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """The request counter and latency histogram of one label set. `labels()` checks
    and locks on every call; the label sets are few (routes, not paths), so each is
    looked up once."""
    method = method if method in _METHODS else "other"  # a client picks the method
    return HTTP_REQUESTS.labels(method, route, str(status)), HTTP_LATENCY.labels(method, route)


class RequestContextMiddleware:
    """`route`: the metrics label when the wrapped app is one route (no router sets it)."""

    def __init__(self, app: ASGIApp, route: str | None = None) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id")
        request_id = valid_request_id(incoming) or new_id()
        token = request_id_var.set(request_id)
        status = 500
        response_started = False
        started = time.perf_counter()

        # Headers the wrapped app wants on its answer (the tools guard's RateLimit ones):
        # added here with the request id, and the status noted in the scope, so that
        # the app need not wrap `send` again.
        extra: list[tuple[bytes, bytes]] = []
        scope[RESPONSE_HEADERS_KEY] = extra

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = scope[RESPONSE_STATUS_KEY] = message["status"]
                # A new list in the message (sent once, by its sender): the sender's own
                # header list (a Response's raw_headers) is left as it was.
                message["headers"] = [
                    *message.get("headers", ()), *extra, (b"x-request-id", request_id.encode())
                ]  # fmt: skip
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Last line of defence: no stack trace in the response or the logs, and no
            # re-raise (uvicorn would log the traceback, which may hold secrets).
            log.error("http.unhandled_error", error=type(exc).__name__)
            if not response_started:
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send_with_id({"type": "http.response.body", "body": _SERVER_ERROR})
        finally:
            elapsed = time.perf_counter() - started
            route = _route_label(scope, self.route)
            method = scope.get("method", "")
            requests, latency = _request_metrics(method, route, status)
            requests.inc()
            latency.observe(elapsed)
            if logs_at(logging.INFO) and scope.get("path") not in _QUIET_PATHS:
                log.info(
                    "http.request",
                    method=method,
                    path=scope.get("path"),
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            request_id_var.reset(token)


class NotReady(Exception):  # noqa: N818 - the name is what /readyz shows
    """A readiness check's failure whose message says why (shown in /readyz)."""


class MemoryPressure(NotReady):
    """Redis is near its maxmemory: with noeviction, writes will soon be refused."""


def redis_check(redis: Redis) -> ReadinessCheck:
    """Redis answers, and has room: with `maxmemory` and `noeviction` (deploy/redis) a
    full Redis refuses writes, so a service reports not ready before that happens."""

    async def check() -> str | None:
        memory: Any = await redis.info("memory")
        used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
        if not limit:
            return None
        share = used / limit
        note = f"memory {share:.0%} of {limit // (1024 * 1024)} MiB"
        if share >= MEMORY_PRESSURE:
            raise MemoryPressure(note)
        return f"ok ({note})"

    return check


def ops_router(checks: Callable[[], Sequence[tuple[str, ReadinessCheck]]]) -> APIRouter:
    """Health, readiness and metrics routes; `checks` lists (name, check) pairs."""
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        results: dict[str, str] = {}
        ready = True
        for name, check in checks():
            try:
                results[name] = await check() or "ok"
            except NotReady as exc:
                ready = False
                results[name] = f"unavailable ({type(exc).__name__}: {exc})"
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                ready = False
                results[name] = f"unavailable ({type(exc).__name__})"
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "checks": results},
            status_code=200 if ready else 503,
        )

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
