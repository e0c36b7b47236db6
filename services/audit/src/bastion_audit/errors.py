"""Errors of the audit API: one exception type, codes from RFC 6750 §3.1 and RFC 6749 §5.2.

ApiError
    status, code (Literal), description safe to show, extra headers
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

__all__ = ["ApiError", "ErrorCode", "install_error_handlers"]

ErrorCode = Literal[
    "invalid_request", "invalid_token", "insufficient_scope", "temporarily_unavailable"
]


@dataclass(frozen=True)
class ApiError(Exception):
    status: int
    code: ErrorCode
    description: str
    headers: dict[str, str] = field(default_factory=dict)


def _body(code: str, description: str) -> dict[str, str]:
    return {"error": code, "error_description": description}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            _body(exc.code, exc.description), status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the parameter and the rule, never echo the input back.
        problems = [
            f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'request'}: {err.get('msg')}"
            for err in exc.errors()[:5]
        ]
        return JSONResponse(_body("invalid_request", "; ".join(problems)), status_code=400)
