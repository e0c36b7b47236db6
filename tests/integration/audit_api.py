"""The audit record as a client reads it: `GET /v1/events` of the audit service.

Security tests check that each refusal left its event. The reader logs in as the
bootstrap admin for the audit resource (`metrics:view`) and renews its token before the
stack's short access-token lifetime runs out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx2

from tests.integration.conftest import ACCESS_TOKEN_TTL, Stack
from tests.integration.oauth import OAuthClient

__all__ = ["AuditApi", "now"]


def now() -> datetime:
    """A `since` bound for events caused after this point (the stack runs on this clock)."""
    return datetime.now(UTC)


class AuditApi:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._token: str | None = None
        self._issued = 0.0

    async def token(self) -> str:
        if self._token is None or time.monotonic() - self._issued > ACCESS_TOKEN_TTL / 2:
            admin = (
                self.stack.env["BOOTSTRAP_ADMIN_USERNAME"],
                self.stack.env["BOOTSTRAP_ADMIN_PASSWORD"],
            )
            client = await OAuthClient.register(self.stack.urls["auth"], "audit-reader")
            body = await client.token(
                *admin, resource=self.stack.urls["audit"], scope="metrics:view"
            )
            self._token, self._issued = body["access_token"], time.monotonic()
        return self._token

    async def renew(self) -> None:
        """Take a new token now (a test that will break sign-in reads the record later)."""
        self._token = None
        await self.token()

    async def events(
        self, type_: str, *, since: datetime | None = None, **filters: str
    ) -> list[dict[str, Any]]:
        """Stored events of one type (filters: principal, outcome, tool, ip)."""
        params: dict[str, str] = {"type": type_, "limit": "1000", **filters}
        if since is not None:
            params["since"] = since.isoformat()
        headers = {"Authorization": f"Bearer {await self.token()}"}
        out: list[dict[str, Any]] = []
        async with httpx2.AsyncClient(timeout=15) as http:
            while True:
                page = await http.get(
                    f"{self.stack.urls['audit']}/v1/events", params=params, headers=headers
                )
                assert page.status_code == 200, page.text
                body = page.json()
                out += body["events"]
                if not body["next_cursor"]:
                    return out
                params["cursor"] = body["next_cursor"]

    async def wait_for(
        self,
        type_: str,
        *,
        since: datetime | None = None,
        where: Callable[[dict[str, Any]], bool] = lambda _event: True,
        count: int = 1,
        timeout: float = 20,
        **filters: str,
    ) -> list[dict[str, Any]]:
        """Waits until at least `count` matching events are stored (the collector is
        asynchronous) and returns all that match; fails the test when they never come."""
        matching: list[dict[str, Any]] = []
        with anyio.move_on_after(timeout):
            while True:
                matching = [e for e in await self.events(type_, since=since, **filters) if where(e)]
                if len(matching) >= count:
                    return matching
                await anyio.sleep(0.3)
        raise AssertionError(
            f"{len(matching)} of {count} {type_} events matching {filters} were stored"
        )
