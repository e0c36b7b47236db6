"""The caller's address, the one way every service reads it (auth, keys and tools alike).

It is what per-address limits and the audit record count by, so a client must not be
able to choose it: `X-Forwarded-For` is believed only when the peer is a configured
trusted proxy (`<SERVICE>_TRUSTED_PROXIES`, IPs or CIDRs), walking right to left past
trusted hops; the first untrusted hop is the caller. No proxy configured: the peer.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

__all__ = ["Networks", "client_ip", "parse_networks"]

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@functools.lru_cache(maxsize=16)
def _networks(values: tuple[str, ...]) -> Networks:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def parse_networks(values: Sequence[str]) -> Networks:
    """The trusted proxies; ValueError names a value that is not an IP or a CIDR."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return _networks(tuple(values))


def _trusted(address: str, networks: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[str]) -> str:
    """The caller's address from the TCP peer and the X-Forwarded-For header."""
    peer = peer or "unknown"
    networks = _networks(tuple(trusted))
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop[:64]
    return peer
