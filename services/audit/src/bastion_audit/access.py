"""Who may read the audit record: a bearer token for this resource holding metrics:view.

RFC 6750 (bearer tokens), RFC 9068 (JWT access tokens, validated by
`bastion_common.tokens`), RFC 8707 (audience = AUDIT_PUBLIC_URL). The token must not be
on auth's denylist; when Redis cannot say, the request is refused (fail closed). Every
refusal is an audit event: `authn.failed` for a bad token, `authz.denied` for a
missing permission.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from redis.exceptions import RedisError

from bastion_common.audit import Outcome
from bastion_common.clientip import client_ip
from bastion_common.errors import ServiceError
from bastion_common.logging import get_logger
from bastion_common.service import ServiceState
from bastion_common.subjects import principal_refusal
from bastion_common.tokens import Principal, TokenError, TokenValidator

__all__ = ["REQUIRED_PERMISSION", "Viewer", "require_viewer"]

REQUIRED_PERMISSION = "metrics:view"
_REALM = 'Bearer realm="bastion-audit"'
log = get_logger(__name__)


def _audit(
    state: ServiceState,
    type_: str,
    outcome: Outcome,
    ip: str,
    principal: str | None,
    **details: Any,
) -> None:
    state.audit.emit(type_, outcome, principal=principal, ip=ip, **details)


def _challenge(error: str, description: str, scope: str | None = None) -> str:
    value = f'{_REALM}, error="{error}", error_description="{description}"'
    return value + (f', scope="{scope}"' if scope else "")


async def require_viewer(request: Request) -> Principal:
    state: ServiceState = request.app.state.bastion
    validator: TokenValidator = state.extra["validator"]
    ip = client_ip(
        request.client.host if request.client else None,
        request.headers.get("x-forwarded-for"),
        request.app.state.bastion.settings.trusted_proxies,
    )
    path = request.url.path
    header = request.headers.get("authorization")
    if not header:
        _audit(state, "authn.failed", "failure", ip, None, reason="missing_token", path=path)
        # RFC 6750 §3.1: no error code when the request carried no credentials.
        raise ServiceError(
            401, "invalid_token", "authentication required", {"WWW-Authenticate": _REALM}
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    try:
        if scheme.lower() != "bearer" or not token:
            raise TokenError("authorization must be a Bearer token")
        principal = await validator.validate(token)
    except TokenError as exc:
        _audit(state, "authn.failed", "failure", ip, None, reason=str(exc), path=path)
        raise ServiceError(
            401,
            "invalid_token",
            str(exc),
            {"WWW-Authenticate": _challenge("invalid_token", str(exc))},
        ) from None
    try:
        # Denylisted, or its subject signed out, disabled or demoted since it was issued.
        refusal = await principal_refusal(state.redis, principal)
    except (RedisError, OSError) as exc:
        log.error("audit.denylist_unavailable", error=type(exc).__name__)
        _audit(
            state,
            "authn.failed",
            "error",
            ip,
            principal.subject,
            reason="revocation state unavailable",
            path=path,
        )
        raise ServiceError(
            503, "temporarily_unavailable", "revocation cannot be checked now", {"Retry-After": "1"}
        ) from None
    if refusal is not None:
        _audit(
            state,
            "authn.failed",
            "failure",
            ip,
            principal.subject,
            reason=refusal,
            path=path,
            jti=principal.token_id,
        )
        raise ServiceError(
            401,
            "invalid_token",
            "token revoked",
            {"WWW-Authenticate": _challenge("invalid_token", "token revoked")},
        )
    if not principal.has(REQUIRED_PERMISSION):
        _audit(
            state,
            "authz.denied",
            "denied",
            ip,
            principal.subject,
            required=[REQUIRED_PERMISSION],
            path=path,
            jti=principal.token_id,
        )
        description = f"this call needs {REQUIRED_PERMISSION}"
        raise ServiceError(
            403,
            "insufficient_scope",
            description,
            {
                "WWW-Authenticate": _challenge(
                    "insufficient_scope", description, REQUIRED_PERMISSION
                )
            },
        )
    return principal


Viewer = Annotated[Principal, Depends(require_viewer)]
