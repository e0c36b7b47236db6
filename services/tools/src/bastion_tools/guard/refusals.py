"""What the guard answers instead of passing a request on: one exception, one renderer.

OAuth errors are `{error, error_description}` (RFC 6750 §3.1); transport and JSON-RPC
problems are a JSON-RPC error object. A 401 or 403 carries the RFC 6750 challenge with
`resource_metadata` (RFC 9728 §5.1) and the scopes to ask for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from bastion_common.audit import EventType, Outcome
from bastion_common.tokens import Principal

__all__ = ["Note", "Refusal", "bearer_challenge", "oauth_error", "rpc_error"]


@dataclass
class Note:
    """The audit event a refusal is recorded as (the guard adds the client's address)."""

    type: EventType
    outcome: Outcome
    principal: Principal | None = None
    tool: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Refusal(Exception):
    """A request refused: its HTTP status, body, headers, the reason counted in the
    `bastion_tools_refusals_total` metric, and the audit event it is recorded as (None:
    not recorded, e.g. a flood refused from memory). Not a frozen dataclass: a frozen
    exception cannot pass through an `asynccontextmanager` (it sets `__traceback__`)."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        reason: str = "",
        note: Note | None = None,
    ) -> None:
        super().__init__(reason or str(status))
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.reason = reason or str(status)
        self.note = note

    async def send(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(self.body, self.status, self.headers)(scope, receive, send)


def oauth_error(error: str, description: str) -> dict[str, Any]:
    return {"error": error, "error_description": description}


def rpc_error(message: str, code: int = -32000) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def bearer_challenge(
    resource_metadata_url: str,
    scopes: Iterable[str],
    *,
    error: str | None = None,
    description: str | None = None,
) -> str:
    """The `WWW-Authenticate` value for a refused call (RFC 6750 §3, RFC 9728 §5.1)."""
    parts = []
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{_quoted(description)}"')
    parts.append(f'scope="{" ".join(sorted(set(scopes)))}"')
    parts.append(f'resource_metadata="{resource_metadata_url}"')
    return "Bearer " + ", ".join(parts)
