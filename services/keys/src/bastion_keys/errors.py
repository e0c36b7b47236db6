"""The keys service's error types and their one mapping to HTTP.

Every refusal is a `KeysError` carrying an OAuth-style code (RFC 6749 §5.2 on the token
endpoint, RFC 6750 §3.1 for bearer tokens, plain codes for the management API) and a
description that is safe to show. Bodies are always `{"error", "error_description"}`;
request validation errors name the field but never echo the input (it may be a key).
When Redis cannot answer, a check cannot be made: 503, never a guess (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from bastion_common.logging import get_logger

__all__ = ["ErrorCode", "KeysError", "error_response", "install_error_handlers"]

log = get_logger(__name__)

ErrorCode = Literal[
    "invalid_request",
    "invalid_token",
    "insufficient_scope",
    "access_denied",
    "not_found",
    "limit_reached",
    "rate_limited",
    "temporarily_unavailable",
    "invalid_grant",
    "invalid_scope",
    "invalid_target",
    "unsupported_grant_type",
]

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# Not frozen: contextlib's context managers assign `__traceback__` to exceptions passing
# through them, which a frozen dataclass refuses (FrozenInstanceError mid-request).
@dataclass
class KeysError(Exception):
    status: int
    code: ErrorCode
    description: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.description}"


def error_response(
    status: int, code: str, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": code, "error_description": description},
        status_code=status,
        headers={**NO_STORE, **(headers or {})},
    )


async def _keys_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KeysError)  # noqa: S101 - registered for KeysError only
    return error_response(exc.status, exc.code, exc.description, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it only
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return error_response(400, "invalid_request", "; ".join(problems))


async def _redis_error(_: Request, exc: Exception) -> JSONResponse:
    log.error("redis.unavailable", error=type(exc).__name__)
    return error_response(
        503, "temporarily_unavailable", "the key store cannot be reached", {"Retry-After": "1"}
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(KeysError, _keys_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisError, _redis_error)
    app.add_exception_handler(OSError, _redis_error)
