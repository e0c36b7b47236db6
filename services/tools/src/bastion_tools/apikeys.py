"""API keys (`mcp_...`) presented directly as bearer values, checked against `keys`.

`POST {keys}/v1/introspect` answers whether a key is active and what it may do. Answers
are cached for at most `cache_seconds` (a second by default) under the key's SHA-256,
and dropped at once when `keys` publishes the key id on `apikeys:revoked`, so a revoked
key stops working within that bound even if the pub/sub message is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from bastion_common.contracts import API_KEY_PREFIX, APIKEY_REVOKED_CHANNEL, KeyIntrospection
from bastion_common.logging import get_logger
from bastion_common.tokens import Principal, TokenError, token_fingerprint
from bastion_tools.upstream import Upstream

__all__ = ["API_KEY_PREFIX", "ApiKeyVerifier"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Entry:
    until: float
    principal: Principal | None


class ApiKeyVerifier:
    def __init__(
        self,
        upstream: Upstream,
        *,
        introspect_url: str,
        keys_resource: str,
        audience: str,
        cache_seconds: float,
        max_entries: int = 10_000,
    ) -> None:
        self._upstream = upstream
        self._url = introspect_url
        self._resource = keys_resource
        self._audience = audience
        self._ttl = cache_seconds
        self._max = max_entries
        self._cache: dict[str, _Entry] = {}
        self._by_key_id: dict[str, str] = {}

    async def verify(self, api_key: str) -> Principal:
        """The key's principal; TokenError when inactive; UpstreamError when keys is down."""
        if len(api_key) > 256:
            raise TokenError("malformed API key")
        fingerprint = token_fingerprint(api_key)
        now = time.monotonic()
        entry = self._cache.get(fingerprint)
        if entry is None or entry.until <= now:
            principal = await self._introspect(api_key)
            if principal is not None:
                principal = dataclasses.replace(principal, fingerprint=fingerprint)
            entry = _Entry(now + self._ttl, principal)
            if len(self._cache) >= self._max:
                self._cache.clear()
                self._by_key_id.clear()
            self._cache[fingerprint] = entry
            if principal is not None:
                self._by_key_id[principal.token_id] = fingerprint
        if entry.principal is None:
            raise TokenError("API key is not active")
        if entry.principal.expires_at <= time.time():
            raise TokenError("API key expired")
        return entry.principal

    def drop(self, key_id: str) -> None:
        fingerprint = self._by_key_id.pop(key_id, None)
        if fingerprint is not None:
            self._cache.pop(fingerprint, None)

    async def _introspect(self, api_key: str) -> Principal | None:
        body = await self._upstream.request(
            "POST", self._url, resource=self._resource, name="keys", json={"api_key": api_key}
        )
        try:
            answer = KeyIntrospection.model_validate(body)
        except ValidationError:
            log.warning("apikey.introspection_unreadable")
            return None
        if not answer.active:
            return None
        if answer.key_id is None or answer.owner is None:
            log.warning("apikey.introspection_unreadable")
            return None
        expires_at = (
            answer.expires_at.timestamp()
            if answer.expires_at is not None
            else time.time() + 365 * 24 * 3600
        )
        return Principal(
            subject=answer.owner,
            issuer="apikey",
            audience=self._audience,
            scopes=frozenset(answer.permissions or ()),
            token_id=answer.key_id,
            expires_at=expires_at,
            not_before=0.0,
            client_id=f"apikey:{answer.key_id}",
            roles=tuple(answer.roles or ()),
            # When the key was made: tools refuses it once its owner is signed out after.
            claims={"iat": answer.created_at.timestamp() if answer.created_at else 0.0},
        )

    async def listen(self, redis: Redis, ready: anyio.Event | None = None) -> None:
        """Drop cached keys as `keys` announces revocations; reconnects until cancelled."""
        while True:
            try:
                async with _subscribed(redis) as pubsub:
                    if ready is not None:
                        ready.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            data = message.get("data")
                            key_id = data.decode() if isinstance(data, bytes) else str(data)
                            self.drop(key_id)
            except (RedisError, OSError) as exc:
                log.warning("apikey.revocation_feed_lost", error=type(exc).__name__)
                # Until it is back, the short cache bounds how long a revoked key lives.
                self._cache.clear()
                self._by_key_id.clear()
                await anyio.sleep(1.0)


@contextlib.asynccontextmanager
async def _subscribed(redis: Redis) -> AsyncIterator[PubSub]:
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(APIKEY_REVOKED_CHANNEL)
        yield pubsub
    finally:
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
