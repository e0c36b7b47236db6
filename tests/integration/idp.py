"""The test stack's OpenID provider (deploy/test-idp: panva's oidc-provider), from the host.

Its issuer is http://idp.bastion.test:<IDP_PORT> for everyone: the auth container resolves
the name through a compose network alias, Chromium through --host-resolver-rules, and the
httpx2 clients made here through a transport that connects to 127.0.0.1 (URL, Host header and
cookies keep the name, exactly as in the browser).

`/_test/` is the provider's test-only control API: change a user's groups, read claims, reset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import urljoin

import httpx2

IDP_HOST = "idp.bastion.test"
CLIENT_ID = "bastion"


@dataclass(frozen=True)
class IdpUser:
    username: str
    password: str
    sub: str
    groups: tuple[str, ...]
    email: str


ALICE = IdpUser(
    "alice",
    "alice-pass-1",
    "0b6f5f0e-8d5c-4a57-9d3e-a11ce0000001",
    ("engineering", "premium-users"),
    "alice@example.org",
)
BOB = IdpUser(
    "bob", "bob-pass-1", "6c2d9a41-3f7e-4b1a-8e22-b0b000000002", ("staff",), "bob@corp.example"
)


class LoopbackTransport(httpx2.BaseTransport):
    """Connects to 127.0.0.1 for IDP_HOST; every other host as usual."""

    def __init__(self) -> None:
        self._inner = httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.host != IDP_HOST:
            return self._inner.handle_request(request)
        # A copy: the client files cookies under the original request's URL.
        direct = httpx2.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1"),
            headers=request.headers,  # Host stays IDP_HOST:port
            stream=request.stream,
            extensions=request.extensions,
        )
        return self._inner.handle_request(direct)

    def close(self) -> None:
        self._inner.close()


_FORM_ACTION = re.compile(r'<form method="post" action="([^"]+/login)"')


@dataclass(frozen=True)
class Idp:
    port: int
    client_secret: str
    redirect_uri: str
    client_id: str = CLIENT_ID

    @property
    def issuer(self) -> str:
        return f"http://{IDP_HOST}:{self.port}"

    @property
    def discovery_url(self) -> str:
        """The discovery URL as auth (and the browser) use it."""
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def local_url(self) -> str:
        """The same server by address, for plain clients on the host."""
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx2.Client:
        """An httpx2 client that reaches the issuer by its name (cookies included)."""
        kwargs.setdefault("timeout", 10)
        return httpx2.Client(transport=LoopbackTransport(), **kwargs)

    def discovery(self) -> dict[str, Any]:
        with self.client() as http:
            response = http.get(self.discovery_url)
            response.raise_for_status()
            metadata: dict[str, Any] = response.json()
            return metadata

    # --- the test-control API ------------------------------------------------------------
    def set_groups(self, username: str, groups: list[str] | tuple[str, ...]) -> dict[str, Any]:
        """Replace a user's groups; the next ID token, refresh or userinfo shows them."""
        response = httpx2.put(
            f"{self.local_url}/_test/users/{username}/groups", json=list(groups), timeout=10
        )
        response.raise_for_status()
        claims: dict[str, Any] = response.json()
        return claims

    def user(self, username: str) -> dict[str, Any]:
        """The user's claims as the provider releases them."""
        response = httpx2.get(f"{self.local_url}/_test/users/{username}", timeout=10)
        response.raise_for_status()
        claims: dict[str, Any] = response.json()
        return claims

    def reset(self) -> None:
        """Every user back to the groups they start with."""
        httpx2.post(f"{self.local_url}/_test/reset", timeout=10).raise_for_status()

    # --- a browser's part of a sign-in, without a browser ---------------------------------
    def sign_in(
        self, http: httpx2.Client, authorize_url: str, username: str, password: str
    ) -> httpx2.Response:
        """Follow `authorize_url` to the login form, post it, and follow the provider's own
        redirects. Returns the first response that is not the provider's: the redirect to
        the client (its Location is not followed), or the login page again (401) after a
        wrong password. `http` should come from `client()`, so the cookies stick."""
        response = self.follow(http, http.get(authorize_url))
        if response.status_code != 200 or "/login" not in response.text:
            return response
        match = _FORM_ACTION.search(response.text)
        assert match, "no login form on the provider's page"
        action = urljoin(str(response.url), unescape(match.group(1)))
        response = http.post(action, data={"login": username, "password": password})
        return self.follow(http, response)

    def follow(self, http: httpx2.Client, response: httpx2.Response) -> httpx2.Response:
        """Follow redirects while they stay at the provider."""
        for _ in range(10):
            location = response.headers.get("location")
            if not response.is_redirect or location is None:
                return response
            target = urljoin(str(response.url), location)
            if not target.startswith(f"{self.issuer}/"):
                return response
            response = http.get(target)
        raise AssertionError("the provider redirected too often")
