"""Dynamic client registration (RFC 7591) for public clients, with validated metadata.

Only public clients register here (`token_endpoint_auth_method: none`): MCP clients run on
users' machines and cannot keep a secret. Redirect URIs must be https, http on a loopback
host (RFC 8252 §7.3), or a private-use scheme in reverse domain form such as
`com.example.app:/callback` (RFC 8252 §7.1); no fragments (RFC 6749 §3.1.2), no userinfo,
no `javascript:` / `data:` or other well-known schemes, bounded sizes (RFC 7591 §2, §5).
Hosts must be plain DNS names or IP literals. `application_type` may be left out: it is
then `native` when every redirect URI is loopback or a private-use scheme, else `web`.
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from bastion_auth.clients import LOOPBACK_HOSTS, Client, clean_host
from bastion_auth.errors import OAuthError

__all__ = [
    "MAX_BODY_BYTES",
    "client_from_metadata",
    "is_native_redirect",
    "is_private_use",
    "validate_redirect_uri",
]

MAX_BODY_BYTES = 16 * 1024
MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2000
MAX_NAME_LENGTH = 200
ALLOWED_GRANTS = frozenset({"authorization_code", "refresh_token"})
# A private-use scheme must be a reverse domain name (RFC 8252 §7.1, "com.example.app").
_PRIVATE_SCHEME = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z0-9][a-z0-9-]*)+$")
# Schemes a browser or OS gives a meaning of its own; never a client's redirect.
_RESERVED_SCHEMES = frozenset(
    {"http", "https", "javascript", "data", "file", "blob", "about", "vbscript", "ws", "wss",
     "ftp", "mailto", "tel", "chrome", "chrome-extension", "intent", "view-source"}
)  # fmt: skip


def is_private_use(uri: str) -> bool:
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    return bool(_PRIVATE_SCHEME.match(scheme)) and scheme not in _RESERVED_SCHEMES


def is_native_redirect(uri: str) -> bool:
    """Loopback http or a private-use scheme: a redirect only an app on the device gets."""
    parts = urlsplit(uri)
    return (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS) or is_private_use(uri)


def validate_redirect_uri(uri: object) -> str:
    if not isinstance(uri, str) or not uri or len(uri) > MAX_URI_LENGTH:
        raise OAuthError("invalid_redirect_uri", "redirect_uris must be non-empty short strings")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in uri):
        raise OAuthError("invalid_redirect_uri", "redirect URI contains spaces or controls")
    try:
        parts = urlsplit(uri)
        _ = parts.port
    except ValueError:
        raise OAuthError("invalid_redirect_uri", "redirect URI is not a valid URL") from None
    if parts.fragment or "#" in uri:
        raise OAuthError("invalid_redirect_uri", "redirect URI must not contain a fragment")
    if parts.username is not None or parts.password is not None:
        raise OAuthError("invalid_redirect_uri", "redirect URI must not contain credentials")
    if is_private_use(uri):
        if not parts.path.startswith("/"):
            raise OAuthError("invalid_redirect_uri", "a private-use redirect URI needs a path")
        return uri
    if not parts.hostname or clean_host(parts) is None:
        raise OAuthError("invalid_redirect_uri", "redirect URI must have a host")
    if parts.scheme == "https":
        return uri
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return uri
    raise OAuthError(
        "invalid_redirect_uri",
        "redirect URI must be https, http on a loopback address, or a private-use scheme"
        " such as com.example.app:/callback",
    )


def client_from_metadata(
    body: object, *, client_id: str | None = None, source: str = "dcr"
) -> Client:
    """A public client from RFC 7591 metadata, or OAuthError(invalid_client_metadata)."""
    if not isinstance(body, dict):
        raise OAuthError("invalid_client_metadata", "metadata must be a JSON object")
    meta: dict[str, Any] = body
    uris = meta.get("redirect_uris")
    if not isinstance(uris, list) or not 1 <= len(uris) <= MAX_REDIRECT_URIS:
        raise OAuthError(
            "invalid_redirect_uri", f"redirect_uris: 1 to {MAX_REDIRECT_URIS} URIs required"
        )
    redirect_uris = [validate_redirect_uri(u) for u in uris]
    app_type = meta.get("application_type")
    if app_type is None:
        native = all(is_native_redirect(u) for u in redirect_uris)
        app_type = "native" if native else "web"
    if app_type not in ("web", "native"):
        raise OAuthError("invalid_client_metadata", "application_type must be web or native")
    auth_method = meta.get("token_endpoint_auth_method", "none")
    if auth_method != "none":
        raise OAuthError(
            "invalid_client_metadata",
            "only public clients register (token_endpoint_auth_method none)",
        )
    grants = meta.get("grant_types", ["authorization_code"])
    if (
        not isinstance(grants, list)
        or not grants
        or not set(grants) <= ALLOWED_GRANTS
        or "authorization_code" not in grants
    ):
        raise OAuthError(
            "invalid_client_metadata", "grant_types: authorization_code, optionally refresh_token"
        )
    response_types = meta.get("response_types", ["code"])
    if response_types != ["code"]:
        raise OAuthError("invalid_client_metadata", 'response_types must be ["code"]')
    name = meta.get("client_name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH):
        raise OAuthError(
            "invalid_client_metadata", f"client_name: 1 to {MAX_NAME_LENGTH} characters"
        )
    return Client(
        client_id=client_id or secrets.token_urlsafe(24),
        redirect_uris=redirect_uris,
        client_name=name,
        grant_types=sorted(set(grants)),
        token_endpoint_auth_method="none",  # noqa: S106 - a method name
        application_type=app_type,
        source=source,
    )
