"""A plain OAuth 2.1 public client for the integration tests: discovery, DCR, PKCE.

Tests that need a user's token for a given resource use this; the official SDK client
is exercised on its own in test_sdk_client.py.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx2

from tests.integration.browser import BrowserResult, HeadlessBrowser

REDIRECT_URI = "http://127.0.0.1:53682/callback"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class OAuthClient:
    auth_url: str
    client_id: str
    metadata: dict[str, Any]

    @classmethod
    async def register(cls, auth_url: str, name: str = "it-client") -> OAuthClient:
        async with httpx2.AsyncClient(timeout=10) as http:
            metadata = (await http.get(f"{auth_url}/.well-known/oauth-authorization-server")).json()
            response = await http.post(
                metadata["registration_endpoint"],
                json={
                    "client_name": name,
                    "application_type": "native",
                    "redirect_uris": [REDIRECT_URI],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "none",
                },
            )
            response.raise_for_status()
            return cls(auth_url, response.json()["client_id"], metadata)

    def authorize_url(self, *, resource: str, scope: str, challenge: str, state: str) -> str:
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": REDIRECT_URI,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": state,
                "resource": resource,
                "scope": scope,
            }
        )
        return f"{self.metadata['authorization_endpoint']}?{query}"

    async def login(
        self, username: str, password: str, *, resource: str, scope: str
    ) -> tuple[BrowserResult, str]:
        """Run the browser part; returns the redirect result and the PKCE verifier."""
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(16)
        browser = HeadlessBrowser(username, password)
        try:
            result = await browser.authorize(
                self.authorize_url(
                    resource=resource, scope=scope, challenge=challenge, state=state
                ),
                REDIRECT_URI,
            )
        finally:
            await browser.aclose()
        assert result.params.get("state") == state
        return result, verifier

    async def exchange(self, code: str, verifier: str, *, resource: str) -> httpx2.Response:
        async with httpx2.AsyncClient(timeout=10) as http:
            return await http.post(
                self.metadata["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": REDIRECT_URI,
                    "client_id": self.client_id,
                    "code_verifier": verifier,
                    "resource": resource,
                },
            )

    async def token(
        self, username: str, password: str, *, resource: str, scope: str
    ) -> dict[str, Any]:
        result, verifier = await self.login(username, password, resource=resource, scope=scope)
        response = await self.exchange(result.params["code"], verifier, resource=resource)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body
