"""The HTTP half of the pipeline every MCP request passes before the SDK sees it.

In order (each refusal is answered here, with its HTTP status, and audited):

1. Host and Origin (MCP transport spec, DNS rebinding): a Host not configured gets
   421, an Origin not configured gets 403.
2. Per-IP bucket in front of authentication: an IP whose bucket of failed attempts is
   empty gets 429 from memory, without crypto or Redis, so floods of bad tokens are cheap.
3. Authentication (RFC 6750 §2.1 header only): a JWT validated locally
   (`bastion_common.tokens`), or an API key (`mcp_...`) checked with `keys`. Missing or
   invalid: 401 with the RFC 9728 challenge; each failure also draws from the IP bucket.
4. One Redis round trip (`ratelimit.RateLimiter`): refuse a revoked `jti` (401), else
   take the call's cost from the principal's bucket (429 with `Retry-After` and
   `RateLimit-Policy` / `RateLimit`). Redis unreachable: 503 (fail closed).
5. RBAC: a `tools/call` for a tool the token's scopes do not allow gets 403
   `insufficient_scope` with every scope needed, so the client can step up.

Then the principal is put in the ASGI scope (`scope["user"]` binds SDK sessions to it,
`scope["bastion.principal"]` is what tools and `policy.ToolCallPolicy` read).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import pydantic_core
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion_common.contracts import API_KEY_PREFIX, CLIENT_IP_SCOPE_KEY, PRINCIPAL_SCOPE_KEY
from bastion_common.http import RESPONSE_HEADERS_KEY, RESPONSE_STATUS_KEY
from bastion_common.logging import get_logger
from bastion_common.tokens import (
    Principal,
    TokenError,
    TokenValidator,
    denylist_key,
    token_fingerprint,
)
from bastion_tools.apikeys import ApiKeyVerifier
from bastion_tools.events import Auditor
from bastion_tools.metadata import bearer_challenge
from bastion_tools.ratelimit import Decision, LimiterUnavailable, RateLimiter, limits_for_roles
from bastion_tools.settings import Settings
from bastion_tools.store import ip_bucket_key, principal_bucket_key
from bastion_tools.tools.catalog import ToolSpec
from bastion_tools.upstream import UpstreamError

__all__ = ["Guard", "GuardDeps", "host_allowed", "origin_allowed"]

log = get_logger(__name__)

REFUSALS = Counter("bastion_tools_refusals_total", "MCP requests refused by the guard", ["reason"])
_MAX_BATCH = 32
_MAX_BLOCKED_IPS = 100_000
_MAX_PLANS = 10_000
_MAX_REMEMBERED = 1024


@dataclass
class GuardDeps:
    validator: TokenValidator
    limiter: RateLimiter
    auditor: Auditor
    apikeys: ApiKeyVerifier | None


def _matches(value: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if value == pattern:
            return True
        if pattern.endswith(":*") and value.startswith(pattern[:-1]):
            port = value[len(pattern) - 1 :]
            if port.isdigit():
                return True
    return False


def host_allowed(host: str | None, settings: Settings) -> bool:
    return bool(host) and _matches(str(host), settings.allowed_hosts)


def origin_allowed(origin: str | None, settings: Settings) -> bool:
    """No Origin header: not a browser, nothing to rebind. Else it must be configured."""
    return origin is None or _matches(origin, settings.allowed_origins)


class _Refusal(Exception):
    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        reason: str = "",
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.reason = reason


def _oauth_error(error: str, description: str) -> dict[str, Any]:
    return {"error": error, "error_description": description}


def _rpc_error(message: str, code: int = -32000) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


class _Wanted:
    """The request headers the guard reads. The first of each name wins, as with
    Starlette's `Headers.get`: a dict built from the list reversed keeps the first, and
    is built in C (a loop over the list in Python cost four times as much)."""

    __slots__ = ("authorization", "content_length", "host", "origin", "session")

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        found = dict(reversed(raw))
        value = found.get(b"host")
        self.host = None if value is None else value.decode("latin-1")
        value = found.get(b"origin")
        self.origin = None if value is None else value.decode("latin-1")
        value = found.get(b"authorization")
        self.authorization = None if value is None else value.decode("latin-1")
        value = found.get(b"content-length")
        self.content_length = None if value is None else value.decode("latin-1")
        value = found.get(b"mcp-session-id")
        self.session = None if value is None else value[:64].decode("latin-1")


def _without_credentials(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request's headers as the SDK and the tools see them: without the bearer
    credential, which the guard has checked and nothing behind it may read or pass on."""
    return [header for header in raw if header[0] != b"authorization"]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the guard derives from one principal, once while its token is valid: the
    user the SDK binds sessions to, the limiter's keys and limits, and the RateLimit
    headers that do not change from call to call."""

    principal: Principal
    user: AuthenticatedUser
    bucket_key: str
    denylist_key: str
    capacity: int
    refill_per_second: float
    policy_header: tuple[bytes, bytes]

    def headers(self, decision: Decision) -> list[tuple[bytes, bytes]]:
        """RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers-10): the
        principal's quota `q` per window `w` seconds, and what remains of it `r` with
        the seconds `t` until the bucket is full again."""
        remaining = max(0, math.floor(decision.remaining))
        return [
            self.policy_header,
            (b"ratelimit", b'"principal";r=%d;t=%d' % (remaining, decision.reset_seconds)),
        ]

    def refusal_headers(self, decision: Decision) -> dict[str, str]:
        """The same headers, for a refusal's answer."""
        return {name.decode(): value.decode() for name, value in self.headers(decision)}


class _Calls(NamedTuple):
    """What a request body asks for: its cost and the tools it calls."""

    cost: int
    tools: tuple[ToolSpec, ...]
    first_tool_name: str | None
    unparsable: bool = False


class Guard:
    """ASGI app in front of the SDK's streamable HTTP endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: ASGIApp | None = None
        self.catalog: dict[str, ToolSpec] = {}
        self.deps: GuardDeps | None = None
        self._blocked: dict[str, float] = {}
        self._plans: dict[str, _Plan] = {}
        self._hosts: dict[str | None, bool] = {}
        self._origins: dict[str | None, bool] = {}

    def bind(self, app: ASGIApp, catalog: dict[str, ToolSpec], deps: GuardDeps) -> None:
        """Attach what the lifespan opened; until then every request gets 503."""
        self.app, self.catalog, self.deps = app, catalog, deps

    def unbind(self) -> None:
        self.app, self.deps = None, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._handle(scope, receive, send)
        except _Refusal as refusal:
            REFUSALS.labels(refusal.reason or str(refusal.status)).inc()
            await _send_json(send, refusal.status, refusal.body, refusal.headers)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        deps, app = self.deps, self.app
        if deps is None or app is None:
            raise _Refusal(503, _rpc_error("service is starting"), reason="starting")
        headers = _Wanted(scope["headers"])
        client = scope.get("client")
        ip = str(client[0]) if client else "unknown"

        # 1. DNS-rebinding protection (MCP transport spec, "Security Warning").
        if not self._checked(self._hosts, headers.host, host_allowed):
            deps.auditor.emit("authz.denied", "denied", ip=ip, reason="host_not_allowed")
            raise _Refusal(421, _oauth_error("invalid_request", "host not allowed"), reason="host")
        if not self._checked(self._origins, headers.origin, origin_allowed):
            deps.auditor.emit("authz.denied", "denied", ip=ip, reason="origin_not_allowed")
            raise _Refusal(
                403, _oauth_error("invalid_request", "origin not allowed"), reason="origin"
            )

        # 2. The per-IP bucket, from memory while this IP is known to be over it.
        blocked_until = self._blocked.get(ip)
        if blocked_until is not None:
            wait = blocked_until - time.monotonic()
            if wait > 0:
                raise _Refusal(
                    429,
                    _rpc_error("too many failed attempts from this address"),
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                    reason="ip_blocked",
                )
            del self._blocked[ip]

        # 3. Authentication.
        principal, token = await self._authenticate(deps, headers, ip)

        # 4. Body, cost, and the one round trip: revocation + rate limit. A body that is
        # too large is refused unread; one that is not JSON still pays for its request.
        body = b""
        try:
            if scope["method"] == "POST":
                declared = headers.content_length or ""
                if declared.isdigit() and int(declared) > self.settings.max_body_bytes:
                    raise _Refusal(
                        413, _rpc_error("request body too large", -32600), reason="too_large"
                    )
                body = await _read_body(receive, self.settings.max_body_bytes)
            calls = self._calls(body)
        except _Refusal as refusal:
            deps.auditor.emit("request.invalid", "failure", principal=principal, ip=ip,
                              reason=refusal.reason, status=refusal.status)  # fmt: skip
            raise
        plan = self._plan(principal, token)
        try:
            decision = await deps.limiter.take(
                plan.bucket_key,
                capacity=plan.capacity,
                refill_per_second=plan.refill_per_second,
                cost=calls.cost,
                denylist_key=plan.denylist_key,
            )
        except LimiterUnavailable as exc:
            self._state_unavailable(deps, plan, calls, ip, exc)
        self._judge(deps, plan, calls, ip, decision)
        if calls.unparsable:
            deps.auditor.emit("request.invalid", "failure", principal=principal, ip=ip,
                              reason="parse_error", status=400)  # fmt: skip
            raise _Refusal(
                400,
                _rpc_error("parse error: the request body is not JSON", -32700),
                plan.refusal_headers(decision),
                reason="parse_error",
            )

        # 5. RBAC (DESIGN.md "Roles and permissions").
        needed = {spec.permission for spec in calls.tools}
        missing = needed - principal.scopes
        if missing:
            deps.auditor.emit(
                "authz.denied", "denied", principal=principal, ip=ip,
                tool=calls.first_tool_name, required=sorted(needed), missing=sorted(missing),
            )  # fmt: skip
            # RFC 6750 §3.1 + MCP step-up: name every scope needed, held ones included.
            challenge = bearer_challenge(
                self.settings, scopes=principal.scopes | needed, error="insufficient_scope",
                description=f"this call needs {' '.join(sorted(missing))}",
            )  # fmt: skip
            raise _Refusal(
                403,
                _oauth_error("insufficient_scope", f"this call needs {' '.join(sorted(missing))}"),
                {"WWW-Authenticate": challenge, **plan.refusal_headers(decision)},
                reason="insufficient_scope",
            )

        scope["headers"] = _without_credentials(scope["headers"])
        scope["user"] = plan.user
        scope[PRINCIPAL_SCOPE_KEY] = principal
        scope[CLIENT_IP_SCOPE_KEY] = ip
        limits = plan.headers(decision)
        session = headers.session
        downstream = _replay(body, receive) if scope["method"] == "POST" else receive
        collected = scope.get(RESPONSE_HEADERS_KEY)
        if isinstance(collected, list):
            # The request context adds these to the answer and notes its status, so
            # `send` needs no wrapper of its own here.
            collected += limits
            try:
                await app(scope, downstream, send)
            finally:
                if session is not None and scope.get(RESPONSE_STATUS_KEY) == 404:
                    _foreign_session(deps, principal, ip, session)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *limits]
                if session is not None and message["status"] == 404:
                    _foreign_session(deps, principal, ip, session)
            await send(message)

        await app(scope, downstream, send_with_limits)

    def _checked(
        self,
        memo: dict[str | None, bool],
        value: str | None,
        check: Callable[[str | None, Settings], bool],
    ) -> bool:
        """`check(value, settings)`, remembered: the same Host and Origin come with
        every call. Bounded (emptied when full), so junk values cannot grow it."""
        verdict = memo.get(value)
        if verdict is None:
            if len(memo) >= _MAX_REMEMBERED:
                memo.clear()
            verdict = memo[value] = check(value, self.settings)
        return verdict

    def _plan(self, principal: Principal, token: str) -> _Plan:
        """The principal's plan, made on its token's first call. Validators hand back the
        same Principal while a token's validation is cached, so a new one (an API key
        whose roles changed, say) gets a new plan."""
        fingerprint = principal.fingerprint or token_fingerprint(token)
        plan = self._plans.get(fingerprint)
        if plan is not None and plan.principal is principal:
            return plan
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        capacity, refill = limits_for_roles(principal.roles, self.settings.rate_limits)
        window = max(1, math.ceil(capacity / refill))
        user = AuthenticatedUser(
            AccessToken(
                token=fingerprint,
                client_id=principal.client_id or principal.subject,
                scopes=sorted(principal.scopes),
                expires_at=int(principal.expires_at),
                resource=self.settings.resource_uri,
                subject=principal.subject,
                claims={"iss": principal.issuer},
            )
        )
        # API keys are revoked in `keys`, not on the access-token denylist.
        is_key = token.startswith(API_KEY_PREFIX)
        plan = self._plans[fingerprint] = _Plan(
            principal=principal,
            user=user,
            bucket_key=principal_bucket_key(principal.subject),
            denylist_key="" if is_key else denylist_key(principal.token_id),
            capacity=capacity,
            refill_per_second=refill,
            policy_header=(b"ratelimit-policy", b'"principal";q=%d;w=%d' % (capacity, window)),
        )
        return plan

    async def _authenticate(
        self, deps: GuardDeps, headers: _Wanted, ip: str
    ) -> tuple[Principal, str]:
        authorization = headers.authorization
        if not authorization:
            await self._failed(deps, ip, "missing_token", None)
            # RFC 6750 §3.1: no credentials, so no error code; the challenge says where to go.
            raise _Refusal(
                401,
                {"error_description": "authentication required"},
                {"WWW-Authenticate": bearer_challenge(self.settings)},
                reason="missing_token",
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        try:
            if scheme.lower() != "bearer" or not token:
                raise TokenError("authorization must be a Bearer token")
            if token.startswith(API_KEY_PREFIX):
                if deps.apikeys is None:
                    raise TokenError("API keys are not accepted here")
                return await deps.apikeys.verify(token), token
            return await deps.validator.validate(token), token
        except TokenError as exc:
            await self._failed(deps, ip, str(exc), token)
            raise _Refusal(
                401,
                _oauth_error("invalid_token", str(exc)),
                {
                    "WWW-Authenticate": bearer_challenge(
                        self.settings, error="invalid_token", description=str(exc)
                    )
                },
                reason="invalid_token",
            ) from None
        except UpstreamError as exc:
            # The key cannot be checked: refuse (fail closed), but say it is temporary.
            deps.auditor.emit(
                "authn.failed", "error", ip=ip, reason="key service unavailable",
                presented="api_key",
            )  # fmt: skip
            raise _Refusal(
                503, _rpc_error(f"API key cannot be checked now: {exc}"), {"Retry-After": "1"},
                reason="keys_unavailable",
            ) from None  # fmt: skip

    async def _failed(self, deps: GuardDeps, ip: str, reason: str, token: str | None) -> None:
        """Audit a failed authentication and draw it from the IP's bucket."""
        credential = "none" if token is None else (
            "api_key" if token.startswith(API_KEY_PREFIX) else "bearer"
        )  # fmt: skip
        deps.auditor.emit("authn.failed", "failure", ip=ip, reason=reason, presented=credential)
        try:
            decision = await deps.limiter.take(
                ip_bucket_key(ip),
                capacity=self.settings.ip_capacity,
                refill_per_second=self.settings.ip_refill_per_second,
            )
        except LimiterUnavailable:
            return  # the request is refused anyway
        if not decision.allowed:
            if len(self._blocked) >= _MAX_BLOCKED_IPS:
                self._blocked.clear()
            self._blocked[ip] = time.monotonic() + decision.retry_after
            deps.auditor.emit(
                "ratelimit.refused", "denied", ip=ip, bucket="ip",
                retry_after=round(decision.retry_after, 3),
            )  # fmt: skip
            raise _Refusal(
                429,
                _rpc_error("too many failed attempts from this address"),
                {"Retry-After": str(max(1, math.ceil(decision.retry_after)))},
                reason="ip_blocked",
            )

    def _calls(self, body: bytes) -> _Calls:
        if not body:
            return _Calls(1, (), None)
        try:
            # The SDK's own parser (jiter): the guard must read the body exactly as the
            # SDK will (a parser differential would let RBAC check one tool and the SDK
            # run another), and it is four times faster than json.loads on bytes.
            parsed = pydantic_core.from_json(body)
        except ValueError:
            return _Calls(1, (), None, unparsable=True)
        messages = parsed if isinstance(parsed, list) else [parsed]
        if len(messages) > _MAX_BATCH:
            raise _Refusal(
                400, _rpc_error("too many messages in one batch", -32600), reason="batch"
            )
        cost = 0
        tools: list[ToolSpec] = []
        first: str | None = None
        for message in messages:
            if not isinstance(message, dict):
                cost += 1
                continue
            if message.get("method") == "tools/call":
                params = message.get("params")
                name = params.get("name") if isinstance(params, dict) else None
                if isinstance(name, str):
                    first = first or name
                    spec = self.catalog.get(name)
                    if spec is not None:
                        tools.append(spec)
                        cost += spec.cost
                        continue
            cost += 1
        return _Calls(max(1, cost), tuple(tools), first)

    def _state_unavailable(
        self, deps: GuardDeps, plan: _Plan, calls: _Calls, ip: str, exc: LimiterUnavailable
    ) -> NoReturn:
        """Revocation and the rate limit cannot be checked: refuse (fail closed)."""
        log.error("guard.state_unavailable", error=str(exc))
        deps.auditor.emit(
            "ratelimit.refused", "error", principal=plan.principal, ip=ip,
            tool=calls.first_tool_name, reason="state store unavailable",
        )  # fmt: skip
        raise _Refusal(
            503,
            _rpc_error("revocation and rate-limit state unavailable; call refused"),
            {"Retry-After": "1"},
            reason="redis_down",
        ) from None

    def _judge(
        self, deps: GuardDeps, plan: _Plan, calls: _Calls, ip: str, decision: Decision
    ) -> None:
        """Refuse a revoked token (401) or an empty bucket (429). Not a coroutine: the
        limiter is awaited in `_handle` itself, and each coroutine level on the way to
        that wait is paid again when the call resumes."""
        principal = plan.principal
        if decision.status == "revoked":
            deps.auditor.emit(
                "authn.failed", "failure", principal=principal, ip=ip, reason="token revoked",
                presented="bearer",
            )  # fmt: skip
            raise _Refusal(
                401,
                _oauth_error("invalid_token", "token revoked"),
                {"WWW-Authenticate": bearer_challenge(
                    self.settings, error="invalid_token", description="token revoked")},
                reason="revoked",
            )  # fmt: skip
        if not decision.allowed:
            retry = max(1, math.ceil(decision.retry_after))
            deps.auditor.emit(
                "ratelimit.refused", "denied", principal=principal, ip=ip,
                tool=calls.first_tool_name, bucket="principal", cost=calls.cost,
                retry_after=round(decision.retry_after, 3),
            )  # fmt: skip
            raise _Refusal(
                429,
                _rpc_error(f"rate limit exceeded; retry after {retry} s"),
                {"Retry-After": str(retry), **plan.refusal_headers(decision)},
                reason="rate_limited",
            )


def _foreign_session(deps: GuardDeps, principal: Principal, ip: str, session: str) -> None:
    # The SDK answers a session that is unknown, expired or created with another
    # credential alike (404): record it, hijack attempts included.
    deps.auditor.emit(
        "request.invalid", "denied", principal=principal, ip=ip,
        reason="unknown_or_foreign_session", session=session,
    )  # fmt: skip


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Refusal(413, _rpc_error("request body too large", -32600), reason="too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str]
) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
