"""What routes depend on: the service context and the authenticated caller.

Callers of the management API and of introspection present an access token from `auth`
for this service's own resource (RFC 8707): validated by `bastion_common.tokens` (issuer
pinned to auth, ES256 against auth's JWKS, audience = KEYS_PUBLIC_URL) and checked
against the shared denylist and the subject's cut-off (`bastion_common.subjects`). Every
refusal is an `authn.failed` event (RFC 6750 §3.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bastion_common.auditor import Auditor
from bastion_common.clientip import client_ip as common_client_ip
from bastion_common.errors import ServiceError
from bastion_common.subjects import principal_refusal
from bastion_common.tokens import Principal, TokenError, TokenValidator
from bastion_keys.settings import Settings
from bastion_keys.signing import SigningKey
from bastion_keys.store import KeyStore
from bastion_keys.usage import UsageTracker

__all__ = ["Caller", "Context", "KeysContext", "client_ip"]


@dataclass(frozen=True)
class KeysContext:
    settings: Settings
    store: KeyStore
    validator: TokenValidator
    signing_key: SigningKey
    auditor: Auditor
    usage: UsageTracker
    offered: dict[str, frozenset[str]]


async def _context(request: Request) -> KeysContext:
    # async on purpose: FastAPI runs a sync dependency in a worker thread, per request.
    context: KeysContext = request.app.state.bastion.extra["keys"]
    return context


Context = Annotated[KeysContext, Depends(_context)]


def client_ip(request: Request) -> str:
    """The caller's address for audit and per-IP limits (`bastion_common.clientip`)."""
    peer = request.client.host if request.client else None
    trusted = request.app.state.bastion.settings.trusted_proxies
    return common_client_ip(peer, request.headers.get("x-forwarded-for"), trusted)


def _refuse(description: str) -> ServiceError:
    return ServiceError(
        401,
        "invalid_token",
        description,
        {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'},
    )


# Declares the scheme in the OpenAPI document; the checks are ours (auto_error off).
_bearer = HTTPBearer(auto_error=False, description="access token from auth for this resource")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def _caller(request: Request, context: Context, credentials: Credentials) -> Principal:
    token = credentials.credentials if credentials else ""
    ip = client_ip(request)
    if not token.strip():
        context.auditor.emit("authn.failed", "failure", ip=ip, reason="missing_token")
        raise ServiceError(401, "invalid_token", "a bearer token is required",
                        {"WWW-Authenticate": 'Bearer realm="keys"'})  # fmt: skip
    try:
        principal = await context.validator.validate(token.strip())
    except TokenError as exc:
        context.auditor.emit("authn.failed", "failure", ip=ip, reason=exc.description)
        raise _refuse(exc.description) from None
    # Denylisted, or its subject signed out, disabled or demoted since (RedisError: 503).
    refusal = await principal_refusal(context.store.redis, principal)
    if refusal is not None:
        context.auditor.emit(
            "authn.failed", "failure", principal=principal.subject,
            client_id=principal.client_id, ip=ip, reason=refusal,
        )  # fmt: skip
        raise _refuse("token revoked")
    return principal


Caller = Annotated[Principal, Depends(_caller)]
