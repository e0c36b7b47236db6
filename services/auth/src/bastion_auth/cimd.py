"""Client ID metadata documents (draft-ietf-oauth-client-id-metadata-document; MCP
2026-07-28 prefers them to DCR): a client_id that is an https URL names its own metadata.

The fetch is an SSRF surface, so: https only, no userinfo or fragment, every address the
host resolves to must be public (no private, loopback, link-local, reserved) unless the
host is listed in `cimd_allowed_hosts`, no redirects, a timeout, a size cap, and the
result is cached. The document's own `client_id` must equal the URL. The server
certificate is checked against the system roots, plus `cimd_ca_file` when set (a test or
development CA; it widens which certificates are believed, never which hosts are fetched).
The fetch connects to the very address that was checked (Host header and TLS SNI /
certificate check still use the name), so DNS rebinding between check and fetch fails.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
import ssl
from urllib.parse import urlsplit

import anyio
import httpx2

from bastion_auth.clients import Client
from bastion_auth.deps import AuthContext
from bastion_auth.errors import OAuthError
from bastion_auth.registration import client_from_metadata
from bastion_auth.store import CIMD_CACHE, digest

__all__ = ["check_url", "is_public_address", "resolve_client"]

# IPv6 ranges that carry or reach an IPv4 address, or are otherwise not a public host:
# a fetch to one of them can land on 169.254.169.254 or 10.0.0.0/8 through a translator
# or a tunnel, whatever `is_global` says of the IPv6 address itself.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291 §2.5.5.1, deprecated
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # NAT64 well-known prefix (RFC 6052 §2.1)
_NOT_PUBLIC_V6 = (
    _IPV4_COMPATIBLE,
    _NAT64,
    *(
        ipaddress.IPv6Network(net)
        for net in (
            "::ffff:0:0/96",  # IPv4-mapped (RFC 4291 §2.5.5.2)
            "64:ff9b:1::/48",  # NAT64 local-use prefix (RFC 8215)
            "2001::/32",  # Teredo (RFC 4380)
            "2002::/16",  # 6to4 (RFC 3056)
            "fec0::/10",  # site-local (RFC 3879 deprecated it; still routed inside sites)
        )
    ),
)


def is_cimd(client_id: str) -> bool:
    return client_id.startswith(("https://", "http://"))


async def check_url(ctx: AuthContext, url: str) -> str | None:
    """Refuse any URL that could reach a place this server must not fetch from; return
    the checked public address to connect to (None for a host allowed by configuration).

    Only a host an operator lists in `cimd_allowed_hosts` (empty by default) may resolve
    to an internal address; every other host must resolve to public addresses only.
    `cimd_ca_file` changes which certificates are believed, never this check."""
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
        return None
    try:
        infos = await anyio.getaddrinfo(parts.hostname, port or 443, type=socket.SOCK_STREAM)
    except OSError:
        raise OAuthError("invalid_client", "client_id host does not resolve") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses or not all(is_public_address(a) for a in addresses):
        raise OAuthError("invalid_client", "client_id host is not a public address")
    return str(addresses[0])


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64, compat)."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """SSRF rule: only a global unicast address, never one that embeds or translates to
    an IPv4 address (checked too), and never site-local."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local or any(address in net for net in _NOT_PUBLIC_V6):
            return False
        if any(not v4.is_global for v4 in _embedded_ipv4(address)):
            return False
    return True


def _pinned(url: str, address: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL to request, its headers and extensions: connect to `address`, while the
    Host header and TLS (SNI, certificate name) keep the original host name."""
    headers = {"Accept": "application/json"}
    if address is None:
        return url, headers, {}
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    headers["Host"] = parts.netloc
    return parts._replace(netloc=netloc).geturl(), headers, {"sni_hostname": parts.hostname or ""}


@functools.cache
def _tls(ca_file: str | None) -> ssl.SSLContext:
    """The system roots, plus the configured extra CA; built once (loading roots is slow)."""
    context = httpx2.create_ssl_context(trust_env=False)
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


async def _fetch(ctx: AuthContext, url: str, address: str | None) -> bytes:
    cap = ctx.settings.cimd_max_bytes
    target, headers, extensions = _pinned(url, address)
    try:
        async with (
            httpx2.AsyncClient(
                timeout=ctx.settings.cimd_timeout,
                follow_redirects=False,
                trust_env=False,
                verify=_tls(ctx.settings.cimd_ca_file),
            ) as http,
            http.stream("GET", target, headers=headers, extensions=extensions) as response,
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
    address = await check_url(ctx, client_id)
    body = await _fetch(ctx, client_id, address)
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
