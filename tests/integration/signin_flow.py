"""A person's browser through a federated sign-in, at the HTTP level: our login page, its
"Sign in with <provider>" link, the provider (driven by the caller), the provider's answer
at our callback, our consent page, the redirect to the client. Nothing is followed
blindly, so a test can stop at any step, tamper with the answer, or stop the provider.

`http` should come from `Idp.client()`, so the test provider's name resolves and the
cookies stick."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import unescape
from urllib.parse import urlencode

import httpx2

from tests.integration.browser import parse_forms
from tests.integration.conftest import Stack
from tests.integration.oauth import pkce_pair
from tests.integration.standins import parse_redirect

REDIRECT = "http://127.0.0.1:53682/callback"  # never served: the client's redirect URI
SCOPE = "weather:read weather:write files:read"


@dataclass
class Flow:
    stack: Stack
    http: httpx2.Client
    client_id: str = ""
    verifier: str = ""
    state: str = "client-state-1"

    def register(self) -> str:
        response = self.http.post(
            f"{self.stack.urls['auth']}/register",
            json={
                "client_name": "Federated agent",
                "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"],
            },
        )
        assert response.status_code == 201, response.text
        self.client_id = str(response.json()["client_id"])
        return self.client_id

    def start(self, provider_name: str) -> str:
        """Our login page and its provider link: the provider URL we are sent to."""
        self.verifier, challenge = pkce_pair()
        query = {
            "response_type": "code", "client_id": self.client_id, "redirect_uri": REDIRECT,
            "code_challenge": challenge, "code_challenge_method": "S256",
            "resource": f"{self.stack.urls['tools']}/mcp", "scope": SCOPE, "state": self.state,
        }  # fmt: skip
        page = self.http.get(f"{self.stack.urls['auth']}/authorize?{urlencode(query)}")
        assert page.status_code == 200, page.text
        link = re.search(rf'href="([^"]+)">Sign in with {re.escape(provider_name)}<', page.text)
        assert link, page.text
        start = self.http.get(f"{self.stack.urls['auth']}{unescape(link.group(1))}")
        assert start.status_code == 303, start.text
        return start.headers["location"]

    def cancel(self, page: httpx2.Response) -> dict[str, str]:
        """Press Cancel on our (login) page: the client's redirect parameters."""
        (form,) = [f for f in parse_forms(page.text) if ("action", "cancel") in f.buttons]
        response = self.http.post(
            f"{self.stack.urls['auth']}{form.action}", data={**form.inputs, "action": "cancel"}
        )
        assert response.status_code == 302, response.text
        assert response.headers["location"].startswith(REDIRECT)
        return parse_redirect(response.headers["location"])

    def consent(self, page: httpx2.Response) -> dict[str, str]:
        """Allow on our consent page: the client's redirect parameters (the code)."""
        (form,) = [f for f in parse_forms(page.text) if ("decision", "allow") in f.buttons]
        response = self.http.post(
            f"{self.stack.urls['auth']}{form.action}", data={**form.inputs, "decision": "allow"}
        )
        assert response.status_code == 302, response.text
        return parse_redirect(response.headers["location"])

    def tokens(self, code: str) -> dict[str, str]:
        response = self.http.post(
            f"{self.stack.urls['auth']}/token",
            data={
                "grant_type": "authorization_code", "client_id": self.client_id, "code": code,
                "redirect_uri": REDIRECT, "code_verifier": self.verifier,
                "resource": f"{self.stack.urls['tools']}/mcp",
            },
        )  # fmt: skip
        assert response.status_code == 200, response.text
        body: dict[str, str] = response.json()
        return body
