"""Calls from `tools` to other services, with this service's own token.

The caller's token is never passed on (confused deputy, MCP security best practices):
`tools` authenticates to auth with OAuth client credentials (RFC 6749 §4.4), asks for a
token bound to the target resource (RFC 8707), caches it until shortly before it
expires, and drops it when the target answers 401.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from pydantic import SecretStr

from bastion_common.logging import get_logger, request_id_headers

__all__ = ["ServiceTokens", "Upstream", "UpstreamError"]

log = get_logger(__name__)
_REFRESH_MARGIN_SECONDS = 30.0


# Not frozen: contextlib assigns __traceback__ to exceptions passing through it.
@dataclass(eq=False)
class UpstreamError(Exception):
    """A service `tools` depends on could not do its part. `message` is safe to show."""

    message: str
    status: int | None = None

    def __str__(self) -> str:
        return self.message


class ServiceTokens:
    """Client-credentials tokens of this service, one per (resource, scope), cached."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        timeout: float,
    ) -> None:
        self._client = client
        self._token_url = token_url
        self._client_id = client_id
        self._secret = client_secret
        self._timeout = timeout
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = anyio.Lock()

    def forget(self, resource: str, scope: str | None) -> None:
        self._cache.pop((resource, scope or ""), None)

    async def token(self, resource: str, scope: str | None = None) -> str:
        key = (resource, scope or "")
        cached = self._cache.get(key)
        if cached is not None and cached[1] - _REFRESH_MARGIN_SECONDS > time.monotonic():
            return cached[0]
        async with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[1] - _REFRESH_MARGIN_SECONDS > time.monotonic():
                return cached[0]
            token, lifetime = await self._fetch(resource, scope)
            self._cache[key] = (token, time.monotonic() + lifetime)
            return token

    async def _fetch(self, resource: str, scope: str | None) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret.get_secret_value(),
            "resource": resource,
        }
        if scope:
            form["scope"] = scope
        try:
            response = await self._client.post(
                self._token_url, data=form, headers=request_id_headers(), timeout=self._timeout
            )
        except httpx2.HTTPError as exc:
            log.warning("upstream.token_unreachable", error=type(exc).__name__)
            raise UpstreamError("the authorization server is unreachable") from None
        if response.status_code != 200:
            log.warning("upstream.token_refused", status=response.status_code)
            raise UpstreamError("the authorization server refused this service's credentials")
        try:
            body = response.json()
            token = str(body["access_token"])
            lifetime = float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise UpstreamError("the authorization server sent an unreadable token") from None
        return token, lifetime


class Upstream:
    """JSON calls to another service with a token for that service's resource."""

    def __init__(self, client: httpx2.AsyncClient, tokens: ServiceTokens, timeout: float) -> None:
        self._client = client
        self.tokens = tokens
        self._timeout = timeout

    async def request(
        self,
        method: str,
        url: str,
        *,
        resource: str,
        scope: str | None = None,
        name: str,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        """The JSON answer of `url`; UpstreamError naming `name` when it cannot be had."""
        for attempt in (1, 2):
            token = await self.tokens.token(resource, scope)
            try:
                response = await self._client.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    headers={"Authorization": f"Bearer {token}", **request_id_headers()},
                    timeout=self._timeout,
                )
            except httpx2.HTTPError as exc:
                log.warning("upstream.unreachable", service=name, error=type(exc).__name__)
                raise UpstreamError(f"the {name} service is unreachable; try again later") from None
            if response.status_code == 401 and attempt == 1:
                # Our cached token was revoked or its key rotated: get a fresh one once.
                self.tokens.forget(resource, scope)
                continue
            if response.status_code >= 400:
                log.warning("upstream.refused", service=name, status=response.status_code)
                raise UpstreamError(
                    f"the {name} service answered {response.status_code}", response.status_code
                )
            try:
                return response.json()
            except ValueError:
                raise UpstreamError(f"the {name} service sent an unreadable answer") from None
        raise UpstreamError(f"the {name} service refused this service's token")
