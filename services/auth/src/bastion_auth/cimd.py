"""Client ID metadata documents (draft-ietf-oauth-client-id-metadata-document; MCP
2026-07-28 prefers them to DCR): a client_id that is an https URL names its own metadata.

The fetch is an SSRF surface, so: https only, no userinfo or fragment, every address the
host resolves to must be public (no private, loopback, link-local, reserved) unless the
host is listed in `cimd_allowed_hosts`, no redirects, a timeout, a size cap, and the
result is cached. The document's own `client_id` must equal the URL.
Known gap: the address is checked at resolution, then httpx resolves again (DNS rebinding
between the two is not prevented).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from urllib.parse import urlsplit

import anyio
import httpx2

from bastion_auth.clients import Client
from bastion_auth.deps import AuthContext
from bastion_auth.errors import OAuthError
from bastion_auth.registration import client_from_metadata
from bastion_auth.store import CIMD_CACHE, digest

__all__ = ["check_url", "resolve_client"]


def is_cimd(client_id: str) -> bool:
    return client_id.startswith(("https://", "http://"))


async def check_url(ctx: AuthContext, url: str) -> None:
    """Refuse any URL that could reach a place this server must not fetch from."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OAuthError("invalid_client", "client_id URL is malformed") from None
    allowed_host = parts.hostname in ctx.settings.cimd_allowed_hosts
    http_ok = ctx.settings.cimd_allow_http and allowed_host
    if parts.scheme != "https" and not (parts.scheme == "http" and http_ok):
        raise OAuthError("invalid_client", "client_id URL must be https")
    if parts.username or parts.password or parts.fragment or not parts.hostname:
        raise OAuthError("invalid_client", "client_id URL has credentials, a fragment or no host")
    if len(url) > 512 or parts.path in ("", "/"):
        raise OAuthError("invalid_client", "client_id URL must have a path and be short")
    if allowed_host:
        return
    try:
        infos = await anyio.getaddrinfo(parts.hostname, port or 443, type=socket.SOCK_STREAM)
    except OSError:
        raise OAuthError("invalid_client", "client_id host does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global or address.is_multicast:
            raise OAuthError("invalid_client", "client_id host is not a public address")


async def _fetch(ctx: AuthContext, url: str) -> bytes:
    cap = ctx.settings.cimd_max_bytes
    try:
        async with (
            httpx2.AsyncClient(
                timeout=ctx.settings.cimd_timeout, follow_redirects=False, trust_env=False
            ) as http,
            http.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise OAuthError("invalid_client", "client metadata document not found")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > cap:
                    raise OAuthError("invalid_client", "client metadata document is too large")
            return body
    except httpx2.HTTPError:
        raise OAuthError("invalid_client", "client metadata document unreachable") from None


async def resolve_client(ctx: AuthContext, client_id: str) -> Client | None:
    """A registered client, or the client a metadata-document URL describes."""
    if not is_cimd(client_id):
        return await ctx.clients.get(client_id)
    key = CIMD_CACHE.format(digest=digest(client_id))
    cached = await ctx.redis.get(key)
    if cached:
        return Client(**json.loads(cached))
    await check_url(ctx, client_id)
    body = await _fetch(ctx, client_id)
    try:
        meta = json.loads(body)
    except ValueError:
        raise OAuthError("invalid_client", "client metadata document is not JSON") from None
    if not isinstance(meta, dict) or meta.get("client_id") != client_id:
        raise OAuthError("invalid_client", "client metadata document names another client_id")
    meta.setdefault("application_type", "native")
    try:
        client = client_from_metadata(meta, client_id=client_id, source="cimd")
    except OAuthError as exc:
        raise OAuthError("invalid_client", f"client metadata: {exc.description}") from None
    if ctx.settings.cimd_cache_seconds:
        from dataclasses import asdict

        await ctx.redis.set(key, json.dumps(asdict(client)), ex=ctx.settings.cimd_cache_seconds)
    ctx.event("client.registered", client_id=client_id, source="cimd")
    return client
