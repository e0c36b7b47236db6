"""RFC 8693 token exchange: an API key in, a short-lived audience-bound access token out.

`POST /token`, form-encoded (RFC 6749 §3.2):
- `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693 §2.1);
- `subject_token` = the API key, `subject_token_type=urn:mcp-secure:api-key` (the
  registry has no type for an opaque API key; RFC 8693 §3 allows a URI of our own);
- `resource` (RFC 8707 §2) required, exactly one, and one of the configured resources;
- `scope` optional: narrows the result, never widens it (`invalid_scope` otherwise).

The token is an RFC 9068 JWT: `aud` = the resource, `scope` = the key's permissions cut
to what the resource offers, `roles` = the owner's roles when the key was made,
`client_id` = `apikey:<key_id>`, lifetime `KEYS_TOKEN_TTL_SECONDS` but never past the
key's own end. Its jti is remembered so that revoking the key denylists it.
Responses carry `Cache-Control: no-store` (RFC 6749 §5.1); errors are RFC 6749 §5.2 JSON.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bastion_common.errors import NO_STORE, ServiceError
from bastion_common.permissions import parse_scope
from bastion_keys.deps import Context, client_ip
from bastion_keys.presentation import PresentationRefused, RateLimited, present

__all__ = ["API_KEY_TOKEN_TYPE", "TOKEN_EXCHANGE", "router"]

# URNs naming grant and token types, not secrets (ruff S105 sees "token" in the names).
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
API_KEY_TOKEN_TYPE = "urn:mcp-secure:api-key"  # noqa: S105
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
_MAX_FIELD = 2048

router = APIRouter(tags=["token exchange"])


def _invalid(code: str, description: str, status: int = 400) -> ServiceError:
    return ServiceError(status, code, description)


async def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        raise _invalid("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        form = await request.form(max_files=0, max_fields=20)
    except StarletteHTTPException:
        raise _invalid("invalid_request", "the form has too many or too large fields") from None
    fields: dict[str, str] = {}
    for name in set(form.keys()):
        values = form.getlist(name)
        if len(values) != 1 or not isinstance(values[0], str):
            # RFC 6749 §3.2: parameters must not be repeated.
            raise _invalid("invalid_request", f"parameter {name} must be given exactly once")
        if len(values[0]) > _MAX_FIELD:
            raise _invalid("invalid_request", f"parameter {name} is too long")
        fields[name] = values[0]
    return fields


@router.post(
    "/token",
    summary="Exchange an API key for an access token (RFC 8693)",
    responses={
        400: {"description": "RFC 6749 §5.2 error"},
        429: {"description": "too many failures"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": [
                            "grant_type",
                            "subject_token",
                            "subject_token_type",
                            "resource",
                        ],
                        "properties": {
                            "grant_type": {"type": "string", "enum": [TOKEN_EXCHANGE]},
                            "subject_token": {"type": "string", "description": "the API key"},
                            "subject_token_type": {"type": "string", "enum": [API_KEY_TOKEN_TYPE]},
                            "resource": {"type": "string", "format": "uri"},
                            "scope": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def token(request: Request, context: Context) -> JSONResponse:
    fields = await _form(request)
    if fields.get("grant_type") != TOKEN_EXCHANGE:
        raise _invalid("unsupported_grant_type", f"only {TOKEN_EXCHANGE} is supported")
    subject = fields.get("subject_token")
    if not subject:
        raise _invalid("invalid_request", "subject_token is required")
    if fields.get("subject_token_type") != API_KEY_TOKEN_TYPE:
        raise _invalid("invalid_request", f"subject_token_type must be {API_KEY_TOKEN_TYPE}")
    if "actor_token" in fields:
        raise _invalid("invalid_request", "delegation with actor_token is not supported")
    requested_type = fields.get("requested_token_type")
    if requested_type not in (None, ACCESS_TOKEN_TYPE):
        raise _invalid("invalid_request", f"requested_token_type must be {ACCESS_TOKEN_TYPE}")
    resource = fields.get("resource")
    if not resource:
        raise _invalid("invalid_target", "resource is required (RFC 8707)")
    offered = context.offered.get(resource)
    if offered is None:
        raise _invalid("invalid_target", "resource is not one this service issues tokens for")

    ip = client_ip(request)
    try:
        accepted = await present(context, subject, ip, via="exchange")
    except RateLimited as exc:
        raise ServiceError(429, "rate_limited", "too many failed key presentations; retry later",
                        {"Retry-After": str(exc.retry_after)}) from None  # fmt: skip
    except PresentationRefused:
        raise _invalid("invalid_grant", "the API key is not valid") from None
    record = accepted.record

    available = set(record.permissions) & offered
    requested = parse_scope(fields.get("scope"))
    if requested - available:
        context.auditor.emit(
            "authz.denied", "denied", principal=record.owner,
            client_id=f"apikey:{record.key_id}", ip=ip, key_id=record.key_id,
            action="apikey.exchange", resource=resource, missing=sorted(requested - available),
        )  # fmt: skip
        raise _invalid("invalid_scope", "scope asks for more than the key holds for this resource")
    granted = sorted(requested or available)
    if not granted:
        raise _invalid("invalid_scope", "the key holds no permission this resource offers")

    now = time.time()
    lifetime = max(1, min(context.settings.token_ttl_seconds, int(accepted.valid_until - now)))
    access_token, jti, exp = context.signing_key.access_token(
        issuer=context.settings.public_url,
        subject=record.owner,
        audience=resource,
        client_id=f"apikey:{record.key_id}",
        scope=" ".join(granted),
        roles=list(record.roles),
        lifetime=lifetime,
    )
    await context.store.remember_token(record.key_id, jti, exp)
    context.auditor.emit(
        "apikey.exchanged", principal=record.owner, client_id=f"apikey:{record.key_id}",
        ip=ip, key_id=record.key_id, resource=resource, scope=" ".join(granted), jti=jti,
    )  # fmt: skip
    return JSONResponse(
        {
            "access_token": access_token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": " ".join(granted),
        },
        headers=NO_STORE,
    )
