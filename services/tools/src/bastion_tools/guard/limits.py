"""Rate limits as the guard applies them: the principal's plan, the RateLimit headers,
and the per-IP bucket of failed authentications.

A plan is what the guard derives from one principal, once while its token is valid: the
user the SDK binds sessions to, the limiter's keys and limits, and the RateLimit-Policy
header. The per-IP bucket sits in front of authentication: an IP whose bucket of failed
attempts is empty gets 429 from memory, without crypto or Redis, so a flood of bad
tokens is cheap to refuse.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from bastion_common.contracts import API_KEY_PREFIX
from bastion_common.permissions import DEFAULT_RATE_LIMITS
from bastion_common.subjects import KEYS_BEFORE, TOKENS_BEFORE, issued_at, subject_key
from bastion_common.tokens import Principal, denylist_key, token_fingerprint
from bastion_tools.guard.authn import refused_credential
from bastion_tools.guard.refusals import Note, Refusal, rpc_error
from bastion_tools.ratelimit import Decision, limits_for_roles
from bastion_tools.store import principal_bucket_key

__all__ = ["IpThrottle", "Plan", "Plans", "judge", "state_unavailable"]

_MAX_PLANS = 10_000
_MAX_BLOCKED_IPS = 100_000


@dataclass(frozen=True, slots=True)
class Plan:
    principal: Principal
    user: AuthenticatedUser
    bucket_key: str
    denylist_key: str  # "" for API keys: they are revoked in `keys`, not on the denylist
    # The subject's cut-off (`bastion_common.subjects`): a credential issued at or before
    # it is revoked; tokens and API keys each have their own field.
    subject_key: str
    cutoff_field: str
    issued_at: float
    capacity: int
    refill_per_second: float

    def headers(self, decision: Decision) -> list[tuple[bytes, bytes]]:
        """RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers-10): the
        principal's quota `q` per window `w` seconds, and what remains of it `r` with
        the seconds `t` until the bucket is full again."""
        window = max(1, math.ceil(self.capacity / self.refill_per_second))
        remaining = max(0, math.floor(decision.remaining))
        return [
            (b"ratelimit-policy", b'"principal";q=%d;w=%d' % (self.capacity, window)),
            (b"ratelimit", b'"principal";r=%d;t=%d' % (remaining, decision.reset_seconds)),
        ]

    def refusal_headers(self, decision: Decision) -> dict[str, str]:
        """The same headers, for a refusal's answer."""
        return {name.decode(): value.decode() for name, value in self.headers(decision)}


class Plans:
    """Plans by token fingerprint, bounded (emptied when full)."""

    def __init__(
        self,
        resource_uri: str,
        rate_limits: Mapping[str, tuple[int, float]],
        role_limits: Mapping[str, tuple[int, float]] = DEFAULT_RATE_LIMITS,
    ) -> None:
        self._resource = resource_uri
        self._rate_limits = rate_limits
        self._role_limits = role_limits
        self._plans: dict[str, Plan] = {}

    def get(self, principal: Principal, token: str) -> Plan:
        """The principal's plan. Validators hand back the same Principal while a token's
        validation is cached, so a new one (an API key whose roles changed) gets a new
        plan."""
        fingerprint = principal.fingerprint or token_fingerprint(token)
        plan = self._plans.get(fingerprint)
        if plan is not None and plan.principal is principal:
            return plan
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        capacity, refill = limits_for_roles(principal.roles, self._rate_limits, self._role_limits)
        user = AuthenticatedUser(
            AccessToken(
                token=fingerprint,
                client_id=principal.client_id or principal.subject,
                scopes=sorted(principal.scopes),
                expires_at=int(principal.expires_at),
                resource=self._resource,
                subject=principal.subject,
                claims={"iss": principal.issuer},
            )
        )
        is_key = token.startswith(API_KEY_PREFIX)
        plan = self._plans[fingerprint] = Plan(
            principal=principal,
            user=user,
            bucket_key=principal_bucket_key(principal.subject),
            denylist_key="" if is_key else denylist_key(principal.token_id),
            subject_key=subject_key(principal.subject),
            cutoff_field=KEYS_BEFORE if is_key else TOKENS_BEFORE,
            issued_at=issued_at(principal),
            capacity=capacity,
            refill_per_second=refill,
        )
        return plan


def _too_many_failures(wait: float) -> Refusal:
    return Refusal(
        429,
        rpc_error("too many failed attempts from this address"),
        {"Retry-After": str(max(1, math.ceil(wait)))},
        reason="ip_blocked",
    )


class IpThrottle:
    """Remembers, per IP, until when its bucket of failed attempts is empty."""

    def __init__(self) -> None:
        self._blocked: dict[str, float] = {}

    def refusal(self, ip: str) -> Refusal | None:
        """The 429 for an IP known to be over its bucket (from memory), or None."""
        blocked_until = self._blocked.get(ip)
        if blocked_until is None:
            return None
        wait = blocked_until - time.monotonic()
        if wait > 0:
            return _too_many_failures(wait)
        del self._blocked[ip]
        return None

    def block(self, ip: str, decision: Decision) -> Refusal:
        """The IP's bucket is empty: remember it, and the refusal to answer with."""
        if len(self._blocked) >= _MAX_BLOCKED_IPS:
            self._blocked.clear()
        self._blocked[ip] = time.monotonic() + decision.retry_after
        refusal = _too_many_failures(decision.retry_after)
        refusal.note = Note(
            "ratelimit.refused",
            "denied",
            details={"bucket": "ip", "retry_after": round(decision.retry_after, 3)},
        )
        return refusal


def state_unavailable(plan: Plan, tool: str | None) -> Refusal:
    """Revocation and the rate limit cannot be checked: refuse (fail closed)."""
    return Refusal(
        503,
        rpc_error("revocation and rate-limit state unavailable; call refused"),
        {"Retry-After": "1"},
        reason="redis_down",
        note=Note(
            "ratelimit.refused",
            "error",
            plan.principal,
            tool,
            {"reason": "state store unavailable"},
        ),
    )


def judge(
    decision: Decision, plan: Plan, cost: int, tool: str | None, challenge: Callable[[], str]
) -> None:
    """Refuse a revoked token (401, with the `WWW-Authenticate` value `challenge()`
    gives) or an empty bucket (429 with Retry-After)."""
    if decision.status == "revoked":
        presented = "api_key" if plan.cutoff_field == KEYS_BEFORE else "bearer"
        raise refused_credential(
            "token revoked", challenge(), plan.principal, reason="revoked", presented=presented
        )
    if not decision.allowed:
        retry = max(1, math.ceil(decision.retry_after))
        raise Refusal(
            429,
            rpc_error(f"rate limit exceeded; retry after {retry} s"),
            {"Retry-After": str(retry), **plan.refusal_headers(decision)},
            reason="rate_limited",
            note=Note(
                "ratelimit.refused",
                "denied",
                plan.principal,
                tool,
                {
                    "bucket": "principal",
                    "cost": cost,
                    "retry_after": round(decision.retry_after, 3),
                },
            ),
        )
