"""Authentication: the bearer credential (RFC 6750 §2.1, header only) to a `Principal`.

`Authenticator` is the seam, shaped like the mcp SDK's `TokenVerifier`: one coroutine
from the credential to who it speaks for. `BearerAuthenticator` is the one the tools
service uses: a JWT validated locally (`bastion_common.tokens.TokenValidator`), or an API
key (`mcp_...`) checked with `keys`. Revocation is not checked here: the guard asks Redis
for it together with the rate limit, in one round trip (`limits`).
"""

from __future__ import annotations

from typing import Literal, Protocol

from bastion_common.contracts import API_KEY_PREFIX
from bastion_common.tokens import Principal, TokenError, TokenValidator
from bastion_tools.apikeys import ApiKeyVerifier
from bastion_tools.guard.refusals import Note, Refusal, oauth_error, rpc_error
from bastion_tools.upstream import UpstreamError

__all__ = [
    "Authenticator",
    "BearerAuthenticator",
    "CredentialUnavailable",
    "bearer_credential",
    "credential_kind",
    "missing_credential",
    "refused_credential",
    "unavailable_checker",
]

CredentialKind = Literal["none", "api_key", "bearer"]


class CredentialUnavailable(Exception):
    """The credential cannot be checked now (its checker is down): refuse, fail closed."""


class Authenticator(Protocol):
    async def authenticate(self, credential: str) -> Principal:
        """The credential's principal. Raises `TokenError` (its description is safe to
        show the caller) when it is refused, `CredentialUnavailable` when it cannot be
        checked now."""
        ...


class BearerAuthenticator:
    """JWTs through `validator`; API keys through `apikeys` (refused when None)."""

    def __init__(self, validator: TokenValidator, apikeys: ApiKeyVerifier | None = None) -> None:
        self._validator = validator
        self._apikeys = apikeys

    async def authenticate(self, credential: str) -> Principal:
        if not credential.startswith(API_KEY_PREFIX):
            return await self._validator.validate(credential)
        if self._apikeys is None:
            raise TokenError("API keys are not accepted here")
        try:
            return await self._apikeys.verify(credential)
        except UpstreamError as exc:
            raise CredentialUnavailable(f"API key cannot be checked now: {exc}") from None


def bearer_credential(authorization: str) -> str:
    """The credential of an `Authorization: Bearer ...` header (RFC 6750 §2.1)."""
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise TokenError("authorization must be a Bearer token")
    return credential


def credential_kind(credential: str | None) -> CredentialKind:
    """What was presented, for the audit record (never the credential itself)."""
    if credential is None:
        return "none"
    return "api_key" if credential.startswith(API_KEY_PREFIX) else "bearer"


def missing_credential(challenge: str) -> Refusal:
    """RFC 6750 §3.1: no credentials, so no error code; the challenge says where to go."""
    return Refusal(
        401,
        {"error_description": "authentication required"},
        {"WWW-Authenticate": challenge},
        reason="missing_token",
    )


def refused_credential(
    description: str,
    challenge: str,
    principal: Principal | None = None,
    reason: str = "invalid_token",
    presented: str = "bearer",
) -> Refusal:
    """401 `invalid_token` (RFC 6750 §3.1). Recorded here only for a `principal` whose
    token was valid but is revoked; the guard records failed authentications itself."""
    note = None
    if principal is not None:
        note = Note(
            "authn.failed",
            "failure",
            principal,
            details={"reason": description, "presented": presented},
        )
    return Refusal(
        401,
        oauth_error("invalid_token", description),
        {"WWW-Authenticate": challenge},
        reason=reason,
        note=note,
    )


def unavailable_checker(exc: CredentialUnavailable, credential: str) -> Refusal:
    """The credential cannot be checked: refuse (fail closed), but say it is temporary."""
    return Refusal(
        503,
        rpc_error(str(exc)),
        {"Retry-After": "1"},
        reason="keys_unavailable",
        note=Note(
            "authn.failed",
            "error",
            details={"reason": "key service unavailable", "presented": credential_kind(credential)},
        ),
    )
