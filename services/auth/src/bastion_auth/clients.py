"""OAuth clients: public clients (DCR or a client ID metadata document) and confidential
service clients (client_credentials, secret stored as SHA-256 of a generated secret)."""

from __future__ import annotations

import hmac
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

from redis.asyncio import Redis

from bastion_auth.store import CLIENT, digest

__all__ = ["Client", "ClientStore", "clean_host", "redirect_uri_matches"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "[::1]", "::1", "localhost"})
SERVICE_CLIENT = "bastion-tools"
_CLEAN_HOST = re.compile(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$")


def clean_host(parts: SplitResult) -> str | None:
    """A URL's host as written (an IPv6 literal keeps its brackets) when it is a plain DNS
    name or IP literal, so it is safe in a CSP source expression; None otherwise. The
    caller has already checked that `parts.port` parses."""
    host = parts.netloc.rsplit("@", 1)[-1]
    if parts.port is not None:
        host = host.removesuffix(f":{parts.port}")
    return host if host and _CLEAN_HOST.match(host) else None


@dataclass
class Client:
    client_id: str
    redirect_uris: list[str] = field(default_factory=list)
    client_name: str | None = None
    grant_types: list[str] = field(default_factory=lambda: ["authorization_code", "refresh_token"])
    token_endpoint_auth_method: str = "none"  # noqa: S105 - a method name
    application_type: str = "native"
    secret_hash: str | None = None
    # Confidential clients: resource -> scopes it may hold there.
    allowed: dict[str, list[str]] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    source: str = "dcr"  # dcr | cimd | service

    @property
    def verified(self) -> bool:
        """Whether an operator vouches for this client. One that registered itself (DCR)
        or is described by a metadata document chose its own name and redirect URIs."""
        return self.source not in ("dcr", "cimd")

    @property
    def document_host(self) -> str | None:
        """The host of a client ID metadata document: who actually describes the client."""
        return urlsplit(self.client_id).hostname if self.source == "cimd" else None

    @property
    def confidential(self) -> bool:
        return self.secret_hash is not None

    def check_secret(self, secret: str | None) -> bool:
        if self.secret_hash is None or not secret:
            return False
        return hmac.compare_digest(digest(secret), self.secret_hash)

    def registration_response(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_id_issued_at": int(self.created_at),
            "client_name": self.client_name,
            "redirect_uris": self.redirect_uris,
            "grant_types": self.grant_types,
            "response_types": ["code"],
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "application_type": self.application_type,
        }


def redirect_uri_matches(registered: list[str], presented: str) -> bool:
    """Exact string match (OAuth 2.1 §2.3.1), except that a loopback http redirect may use
    any port (RFC 8252 §7.3)."""
    if presented in registered:
        return True
    try:
        p = urlsplit(presented)
        _ = p.port  # raises on a malformed port
    except ValueError:
        return False
    if p.scheme != "http" or p.hostname is None or f"{p.hostname}" not in LOOPBACK_HOSTS:
        return False
    for uri in registered:
        r = urlsplit(uri)
        if (
            r.scheme == "http"
            and r.hostname == p.hostname
            and r.path == p.path
            and r.query == p.query
            and not p.fragment
            and r.username is None
            and p.username is None
        ):
            return True
    return False


class ClientStore:
    """Client records. One that registered itself (DCR) lives `dcr_ttl` seconds past its
    last use, so a flood of registrations that are never used cleans itself up."""

    def __init__(self, redis: Redis, *, dcr_ttl: int = 30 * 86400) -> None:
        self._redis = redis
        self._dcr_ttl = dcr_ttl

    async def get(self, client_id: str) -> Client | None:
        if not client_id or len(client_id) > 512:
            return None
        key = CLIENT.format(client_id=client_id)
        raw = await self._redis.get(key)
        if not raw:
            return None
        client = Client(**json.loads(raw))
        if client.source == "dcr":
            await self._redis.expire(key, self._dcr_ttl)  # used: its clock starts again
        return client

    async def save(self, client: Client) -> None:
        ttl = self._dcr_ttl if client.source == "dcr" else None
        await self._redis.set(
            CLIENT.format(client_id=client.client_id), json.dumps(asdict(client)), ex=ttl
        )

    async def register_service_client(
        self,
        client_id: str,
        secret: str,
        allowed: dict[str, list[str]],
        *,
        grant_types: tuple[str, ...] | list[str] = ("client_credentials",),
    ) -> None:
        """(Re)register a confidential service client from configuration at start-up."""
        await self.save(
            Client(
                client_id=client_id,
                client_name=client_id,
                grant_types=list(grant_types),
                token_endpoint_auth_method="client_secret_post",  # noqa: S106 - a method name
                secret_hash=digest(secret),
                allowed=allowed,
                source="service",
            )
        )
