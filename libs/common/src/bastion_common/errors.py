"""The one error type of every service's HTTP API, and its one renderer.

A refusal is a `ServiceError`: an HTTP status, an OAuth-style code (RFC 6749 §5.2,
RFC 6750 §3.1, RFC 8707 §2, or a plain code for a management API), a description that
is safe to show, and extra headers. Its body is always
`{"error": ..., "error_description": ...}`, never cached.

`install_error_handlers` renders it, names the field and the rule of a request that fails
validation (never the value: it may be a password or a key), and answers 503 when Redis
cannot be reached (a check that cannot be made refuses the request: fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from bastion_common.logging import get_logger

__all__ = ["NO_STORE", "ServiceError", "error_body", "error_response", "install_error_handlers"]

log = get_logger(__name__)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# Not frozen: contextlib's context managers assign `__traceback__` to exceptions passing
# through them, which a frozen dataclass refuses (FrozenInstanceError mid-request).
@dataclass(eq=False)
class ServiceError(Exception):
    status: int
    error: str
    description: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.error}: {self.description}"


def error_body(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


def error_response(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(error, description), status_code=status, headers={**NO_STORE, **(headers or {})}
    )


def validation_problems(exc: RequestValidationError) -> str:
    """Where each of the first five problems is and which rule it breaks."""
    problems = []
    for problem in exc.errors()[:5]:
        where = ".".join(str(p) for p in problem.get("loc", ()) if p not in ("body", "query"))
        problems.append(f"{where or 'request'}: {problem.get('msg', 'invalid')}")
    return "; ".join(problems)


def install_error_handlers(app: FastAPI, *, unavailable: str = "a store cannot be reached") -> None:
    """`unavailable` is the description of the 503 answered while Redis is away."""

    async def service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)  # noqa: S101 - registered for it only
        return error_response(exc.status, exc.error, exc.description, exc.headers)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it only
        return error_response(400, "invalid_request", validation_problems(exc))

    async def store_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("redis.unavailable", error=type(exc).__name__)
        return error_response(503, "temporarily_unavailable", unavailable, {"Retry-After": "1"})

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(RedisError, store_down)
    app.add_exception_handler(OSError, store_down)
