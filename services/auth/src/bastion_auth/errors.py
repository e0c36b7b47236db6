"""OAuth errors (RFC 6749 §5.2, RFC 8707 §2, RFC 7009 §2.2.1): the shared
`ServiceError` with the code first, as the RFCs write them, and one JSON shape."""

from __future__ import annotations

from typing import Literal

from fastapi.responses import JSONResponse

from bastion_common.errors import ServiceError, error_response

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


class OAuthError(ServiceError):
    def __init__(self, error: ErrorCode, description: str, status: int = 400) -> None:
        # RFC 6749 §5.2: a 401 for client authentication names the scheme.
        headers = {"WWW-Authenticate": 'Basic realm="bastion-auth"'} if status == 401 else {}
        super().__init__(status, error, description, headers)


def oauth_error_response(exc: ServiceError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.description, exc.headers)
