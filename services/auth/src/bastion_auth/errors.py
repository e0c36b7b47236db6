"""OAuth errors as types (RFC 6749 §5.2, RFC 8707 §2, RFC 7009 §2.2.1), one JSON shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi.responses import JSONResponse

__all__ = ["ErrorCode", "OAuthError", "oauth_error_response"]

ErrorCode = Literal[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "access_denied",
    "unsupported_response_type",
    "unsupported_token_type",
    "invalid_client_metadata",
    "invalid_redirect_uri",
    "invalid_token",
    "insufficient_scope",
    "temporarily_unavailable",
    "server_error",
]


# Not frozen: contextlib sets __traceback__ on exceptions passing through `async with`.
@dataclass(eq=False)
class OAuthError(Exception):
    error: ErrorCode
    description: str
    status: int = 400

    def __str__(self) -> str:
        return f"{self.error}: {self.description}"


def oauth_error_response(exc: OAuthError) -> JSONResponse:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if exc.status == 401:
        # RFC 6749 §5.2: a 401 for client authentication names the scheme.
        headers["WWW-Authenticate"] = 'Basic realm="bastion-auth"'
    return JSONResponse(
        {"error": exc.error, "error_description": exc.description},
        status_code=exc.status,
        headers=headers,
    )
