"""Client authentication at the token, revocation and introspection endpoints
(RFC 6749 §2.3.1: client_secret_basic or client_secret_post; public clients send only
client_id). Unknown clients get 401 invalid_client so MCP clients re-register."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote

from bastion_auth.clients import Client
from bastion_auth.errors import OAuthError

__all__ = ["ClientCredentials", "credentials_from"]


class ClientCredentials:
    def __init__(self, client_id: str | None, secret: str | None, method: str) -> None:
        self.client_id = client_id
        self.secret = secret
        self.method = method

    def check(self, client: Client | None) -> Client:
        if client is None:
            raise OAuthError("invalid_client", "unknown client", 401)
        if client.confidential:
            if not client.check_secret(self.secret):
                raise OAuthError("invalid_client", "client authentication failed", 401)
        elif self.secret:
            raise OAuthError("invalid_client", "public clients have no secret", 401)
        return client


def credentials_from(authorization: str | None, form: dict[str, str]) -> ClientCredentials:
    if authorization and authorization.lower().startswith("basic "):
        try:
            raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            user, _, password = raw.partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
        if form.get("client_id") and form["client_id"] != unquote(user):
            raise OAuthError("invalid_request", "client_id differs from Basic credentials")
        return ClientCredentials(unquote(user), unquote(password), "client_secret_basic")
    client_id = form.get("client_id") or None
    secret = form.get("client_secret") or None
    return ClientCredentials(client_id, secret, "client_secret_post" if secret else "none")
