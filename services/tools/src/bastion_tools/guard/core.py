"""The HTTP half of the pipeline: every MCP request passes the `Guard` before the SDK.

In order, each refusal answered here with its HTTP status and audited:

1. Host and Origin (`transport`): 421 / 403.
2. The per-IP bucket of failed authentications (`limits.IpThrottle`): 429 from memory
   for a credential that fails while the address is over its budget.
3. Authentication (`authn`): missing or invalid credential, 401 with the RFC 9728
   challenge; each failure also draws from the IP's bucket. Checker down: 503.
4. The body (`body`, `rbac.read_calls`): too large, 413; too many messages, 400.
5. One Redis round trip (`ratelimit.RateLimiter`, `limits.judge`): a revoked `jti` gets
   401, an empty bucket 429 with the RateLimit headers. Redis down: 503 (fail closed).
6. RBAC (`rbac.step_up`): a `tools/call` the token's scopes do not allow, 403.

Then the principal goes in the ASGI scope (`scope["user"]` binds SDK sessions to it;
`contracts.PRINCIPAL_SCOPE_KEY` is what the policy and the tools read), the bearer
credential leaves the headers, and the RateLimit headers go on the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion_common.auditor import Auditor
from bastion_common.clientip import client_ip
from bastion_common.contracts import CLIENT_IP_SCOPE_KEY, PRINCIPAL_SCOPE_KEY
from bastion_common.logging import get_logger
from bastion_common.permissions import DEFAULT_RATE_LIMITS
from bastion_common.tokens import Principal, TokenError
from bastion_tools.guard import authn
from bastion_tools.guard.body import read_body, replay
from bastion_tools.guard.limits import IpThrottle, Plan, Plans, judge, state_unavailable
from bastion_tools.guard.rbac import ToolRule, read_calls, step_up
from bastion_tools.guard.refusals import Note, Refusal, bearer_challenge, rpc_error
from bastion_tools.guard.transport import check_routing_headers, check_transport
from bastion_tools.ratelimit import Decision, LimiterUnavailable, RateLimiter
from bastion_tools.store import ip_bucket_key

__all__ = ["Guard", "GuardConfig", "GuardDeps"]

log = get_logger(__name__)
REFUSALS = Counter("bastion_tools_refusals", "MCP requests refused by the guard", ["reason"])


@dataclass(frozen=True)
class GuardConfig:
    """What the guard enforces. `resource_uri` is the RFC 8707 canonical URI (the
    audience tokens must carry); `role_limits` maps each role of the policy file to
    (capacity, refill per second), `rate_limits` overrides some of them."""

    resource_uri: str
    resource_metadata_url: str
    scopes_supported: Sequence[str]
    allowed_hosts: Sequence[str]
    allowed_origins: Sequence[str] = ()
    authorization_servers: Sequence[str] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    rate_limits: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    role_limits: Mapping[str, tuple[int, float]] = field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS)
    )
    ip_capacity: int = 30
    ip_refill_per_second: float = 1.0
    trusted_proxies: Sequence[str] = ()  # whose X-Forwarded-For is believed (clientip)


@dataclass
class GuardDeps:
    authenticator: authn.Authenticator
    limiter: RateLimiter
    auditor: Auditor


class Guard:
    """ASGI app in front of the SDK's streamable HTTP endpoint."""

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.app: ASGIApp | None = None
        self.rules: Mapping[str, ToolRule] = {}
        self.deps: GuardDeps | None = None
        self.plans = Plans(config.resource_uri, config.rate_limits, config.role_limits)
        self.throttle = IpThrottle()

    def bind(self, app: ASGIApp, rules: Mapping[str, ToolRule], deps: GuardDeps) -> None:
        """Attach what the lifespan opened; until then every request gets 503."""
        self.app, self.rules, self.deps = app, rules, deps

    def unbind(self) -> None:
        self.app, self.deps = None, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        client = scope.get("client")
        forwarded = (
            Headers(scope=scope).get("x-forwarded-for") if self.config.trusted_proxies else None
        )
        ip = client_ip(str(client[0]) if client else None, forwarded, self.config.trusted_proxies)
        try:
            await self._handle(scope, receive, send, ip)
        except Refusal as refusal:
            REFUSALS.labels(refusal.reason).inc()
            note, deps = refusal.note, self.deps
            if note is not None and deps is not None:
                deps.auditor.emit(
                    note.type,
                    note.outcome,
                    principal=note.principal,
                    ip=ip,
                    tool=note.tool,
                    **note.details,
                )
            await refusal.send(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ip: str) -> None:
        deps, app = self.deps, self.app
        if deps is None or app is None:
            raise Refusal(503, rpc_error("service is starting"), reason="starting")
        headers = Headers(scope=scope)
        config = self.config
        check_transport(
            headers.get("host"), headers.get("origin"), config.allowed_hosts, config.allowed_origins
        )
        # An address over its budget of failed credentials is refused from memory, but a
        # credential that verifies still gets through (a verified token is cached, so
        # it stays cheap): a proxy or NAT shared with an attacker must not lock out
        # everyone behind it. Only failures are charged to the address.
        blocked = self.throttle.refusal(ip)
        principal, credential = await self._authenticate(
            deps, headers.get("authorization"), ip, blocked
        )
        body = b""
        try:
            if scope["method"] == "POST":
                body = await read_body(
                    receive, headers.get("content-length"), config.max_body_bytes
                )
            calls = read_calls(body, self.rules)
            check_routing_headers(
                headers.get("mcp-method"), headers.get("mcp-name"), calls.method, calls.first_tool
            )
        except Refusal as refusal:
            refusal.note = Note(
                "request.invalid",
                "failure",
                principal,
                details={"reason": refusal.reason, "status": refusal.status},
            )
            raise
        plan = self.plans.get(principal, credential)
        try:
            decision = await deps.limiter.take(
                plan.bucket_key,
                capacity=plan.capacity,
                refill_per_second=plan.refill_per_second,
                cost=calls.cost,
                denylist_key=plan.denylist_key,
                subject_key=plan.subject_key,
                cutoff_field=plan.cutoff_field,
                issued_at=plan.issued_at,
            )
        except LimiterUnavailable as exc:
            log.error("guard.state_unavailable", error=str(exc))
            raise state_unavailable(plan, calls.first_tool) from None
        try:
            judge(
                decision,
                plan,
                calls.cost,
                calls.first_tool,
                lambda: self._challenge("invalid_token", "token revoked"),
            )
            if calls.unparsable:
                raise Refusal(
                    400,
                    rpc_error("parse error: the request body is not JSON", -32700),
                    reason="parse_error",
                    note=Note(
                        "request.invalid",
                        "failure",
                        principal,
                        details={"reason": "parse_error", "status": 400},
                    ),
                )
            step_up(principal, calls, config.resource_metadata_url)
        except Refusal as refusal:
            refusal.headers = {**plan.refusal_headers(decision), **refusal.headers}
            raise
        downstream = replay(body, receive) if scope["method"] == "POST" else receive
        scope["headers"] = [h for h in scope["headers"] if h[0] != b"authorization"]
        scope["user"] = plan.user
        scope[PRINCIPAL_SCOPE_KEY] = principal
        scope[CLIENT_IP_SCOPE_KEY] = ip
        await app(scope, downstream, self._answer(deps, plan, decision, headers, ip, send))

    def _challenge(self, error: str | None = None, description: str | None = None) -> str:
        return bearer_challenge(
            self.config.resource_metadata_url,
            self.config.scopes_supported,
            error=error,
            description=description,
        )

    async def _authenticate(
        self, deps: GuardDeps, authorization: str | None, ip: str, blocked: Refusal | None
    ) -> tuple[Principal, str]:
        if not authorization:
            if blocked is not None:
                raise blocked
            await self._failed(deps, ip, "missing_token", None)
            raise authn.missing_credential(self._challenge())
        credential = authorization.partition(" ")[2].strip()
        if blocked is not None and authn.credential_kind(credential) == "api_key":
            # An unknown key costs a call to keys: from a blocked address, none is made.
            raise blocked
        try:
            credential = authn.bearer_credential(authorization)
            return await deps.authenticator.authenticate(credential), credential
        except TokenError as exc:
            if blocked is not None:
                raise blocked from None  # neither audited nor charged again: from memory
            await self._failed(deps, ip, str(exc), credential)
            challenge = self._challenge("invalid_token", str(exc))
            raise authn.refused_credential(str(exc), challenge) from None
        except authn.CredentialUnavailable as exc:
            raise authn.unavailable_checker(exc, credential) from None

    async def _failed(self, deps: GuardDeps, ip: str, reason: str, credential: str | None) -> None:
        """Audit a failed authentication and draw it from the IP's bucket (429 once empty)."""
        deps.auditor.emit(
            "authn.failed",
            "failure",
            ip=ip,
            reason=reason,
            presented=authn.credential_kind(credential),
        )
        try:
            decision = await deps.limiter.take(
                ip_bucket_key(ip),
                capacity=self.config.ip_capacity,
                refill_per_second=self.config.ip_refill_per_second,
            )
        except LimiterUnavailable:
            return  # the request is refused anyway
        if not decision.allowed:
            raise self.throttle.block(ip, decision)

    def _answer(
        self, deps: GuardDeps, plan: Plan, decision: Decision, headers: Headers, ip: str, send: Send
    ) -> Send:
        """`send` with the RateLimit headers added to the answer. The SDK answers 404 to a
        session that is unknown, expired or made with another credential: recorded here,
        hijack attempts included."""
        limits = plan.headers(decision)
        session = headers.get("mcp-session-id")

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *limits]
                if session is not None and message["status"] == 404:
                    deps.auditor.emit(
                        "request.invalid",
                        "denied",
                        principal=plan.principal,
                        ip=ip,
                        reason="unknown_or_foreign_session",
                        session=session[:64],
                    )
            await send(message)

        return answer
