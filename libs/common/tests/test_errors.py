"""The one error type and renderer: the body every service answers, what a request that
fails validation is told (never its values), 503 while Redis is away, and an error that
passes through an async context manager staying itself."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx2
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError

from bastion_common.errors import ServiceError, install_error_handlers
from bastion_common.tokens import TokenError

pytestmark = pytest.mark.anyio

SECRET = "hunter2-hunter2-hunter2"


class Body(BaseModel):
    name: str
    count: int


@contextlib.asynccontextmanager
async def _scope() -> AsyncIterator[None]:
    yield


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, unavailable="the test store cannot be reached")

    @app.post("/things")
    async def things(body: Body) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/refused")
    async def refused() -> None:
        raise ServiceError(403, "insufficient_scope", "needs things:write", {"X-Why": "scope"})

    @app.get("/token")
    async def token() -> None:
        async with _scope():  # a frozen error would become FrozenInstanceError here
            raise TokenError("token expired")

    @app.get("/down")
    async def down() -> None:
        raise RedisConnectionError("connection refused by 10.0.0.5:6379")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=_app())
    async with httpx2.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


async def test_a_service_error_is_the_oauth_body_never_cached(client: httpx2.AsyncClient) -> None:
    answer = await client.get("/refused")
    assert answer.status_code == 403
    assert answer.json() == {
        "error": "insufficient_scope",
        "error_description": "needs things:write",
    }
    assert answer.headers["cache-control"] == "no-store" and answer.headers["x-why"] == "scope"


async def test_a_token_error_through_a_context_manager_is_a_401(client: httpx2.AsyncClient) -> None:
    answer = await client.get("/token")
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid_token", "error_description": "token expired"}


async def test_a_request_that_fails_validation_is_told_where_never_its_values(
    client: httpx2.AsyncClient,
) -> None:
    answer = await client.post("/things", json={"name": 7, "count": SECRET})
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "invalid_request"
    assert "count" in body["error_description"] and "name" in body["error_description"]
    assert SECRET not in answer.text


async def test_redis_away_is_503_with_retry_after_and_no_address(
    client: httpx2.AsyncClient,
) -> None:
    answer = await client.get("/down")
    assert answer.status_code == 503
    assert answer.json() == {
        "error": "temporarily_unavailable",
        "error_description": "the test store cannot be reached",
    }
    assert answer.headers["retry-after"] == "1" and "10.0.0.5" not in answer.text
