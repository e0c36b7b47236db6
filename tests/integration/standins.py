"""Stand-ins for two identity providers nobody can reach from here, as real HTTP servers in
a thread (tests only; every key, user and code lives in memory):

- `GitHubStandIn`: GitHub's OAuth App endpoints and REST API in their documented shapes
  (docs.github.com, "Authorizing OAuth apps" and the REST "users", "emails", "orgs" and
  "teams" pages): `GET /login/oauth/authorize` (approves at once as `signed_in`, with
  PKCE S256), `POST /login/oauth/access_token` (form in; form-encoded out unless
  `Accept: application/json`; errors are HTTP 200 with an `error` field, as at GitHub),
  `GET /user`, `/user/emails`, `/user/orgs`, `/user/teams` (401 "Bad credentials").
- `EnterpriseIdp`: an enterprise IdP's signing side for ID-JAG
  (draft-ietf-oauth-identity-assertion-authz-grant): an ES256 test key, its JWKS at
  `/jwks.json`, and `assertion(...)`, the grant it would issue after a token exchange.

The auth container reaches them through the docker host (compose.test.yaml, STANDIN_HOST);
in-process unit tests reach them on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ID_JAG_TYP = "oauth-id-jag+jwt"
DOCS = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"


class _Server:
    """A ThreadingHTTPServer whose handler calls `route(method, path, query, headers, body)`."""

    def __init__(self, host: str, port: int) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                status, ctype, payload, extra = owner.route(
                    self.command, parts.path, dict(parse_qsl(parts.query)), self.headers, body
                )
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve  # noqa: N815 - http.server's names
            do_POST = _serve  # noqa: N815

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    Reply = tuple[int, str, bytes, dict[str, str]]

    def route(
        self, method: str, path: str, query: dict[str, str], headers: Any, body: str
    ) -> Reply:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _json(status: int, value: Any, **headers: str) -> _Server.Reply:
    return status, "application/json; charset=utf-8", json.dumps(value).encode(), headers


@dataclass
class GitHubUser:
    id: int
    login: str
    emails: list[dict[str, Any]]
    orgs: list[str] = field(default_factory=list)
    teams: list[str] = field(default_factory=list)  # "org/slug"
    name: str | None = None


class GitHubStandIn(_Server):
    def __init__(
        self,
        client_id: str,
        client_secret: str,
        callback_prefix: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.callback_prefix = callback_prefix  # GitHub: redirect_uri must be under it
        self.users: dict[str, GitHubUser] = {}
        self.signed_in: str | None = None
        self._codes: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}  # access token -> login
        # True: answer the token endpoint form-encoded whatever Accept says (GitHub's
        # default answer, as a proxy that drops Accept would leave it).
        self.form_only = False
        self.requests: list[tuple[str, str]] = []
        super().__init__(host, port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def revoke_tokens(self, login: str) -> None:
        """The person revokes the app's access at GitHub: its tokens stop working."""
        for token in [t for t, who in self.tokens.items() if who == login]:
            del self.tokens[token]

    def route(
        self, method: str, path: str, query: dict[str, str], headers: Any, body: str
    ) -> _Server.Reply:
        self.requests.append((method, path))
        if method == "GET" and path == "/login/oauth/authorize":
            return self._authorize(query)
        if method == "POST" and path == "/login/oauth/access_token":
            return self._access_token(dict(parse_qsl(body)), headers.get("accept", ""))
        if method == "GET" and path.startswith("/user"):
            return self._api(path, headers.get("authorization", ""))
        return _json(
            404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
        )

    def _authorize(self, query: dict[str, str]) -> _Server.Reply:
        if query.get("client_id") != self.client_id:
            return 404, "text/html", b"<h1>404</h1>", {}
        redirect = query.get("redirect_uri", self.callback_prefix)
        if not redirect.startswith(self.callback_prefix):
            return (
                200,
                "text/html",
                b"<p>The redirect_uri is not associated with this application.</p>",
                {},
            )
        if self.signed_in is None:
            return 200, "text/html", b"<form><input name=login></form>", {}
        code = secrets.token_hex(10)  # GitHub's codes are 20 hex characters
        self._codes[code] = {
            "login": self.signed_in,
            "redirect_uri": redirect,
            "challenge": query.get("code_challenge"),
            "method": query.get("code_challenge_method"),
            "exp": time.time() + 600,
        }
        target = f"{redirect}{'&' if '?' in redirect else '?'}" + urlencode(
            {"code": code, "state": query.get("state", "")}
        )
        return 302, "text/html", b"", {"location": target}

    def _access_token(self, form: dict[str, str], accept: str) -> _Server.Reply:
        def answer(values: dict[str, str]) -> _Server.Reply:
            if "application/json" in accept and not self.form_only:
                return _json(200, values)
            return (
                200,
                "application/x-www-form-urlencoded; charset=utf-8",
                urlencode(values).encode(),
                {},
            )

        def error(code: str, description: str) -> _Server.Reply:
            return answer(
                {"error": code, "error_description": description, "error_uri": f"{DOCS}#{code}"}
            )

        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return error(
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
            )
        grant = self._codes.pop(form.get("code", ""), None)
        if grant is None or grant["exp"] < time.time():
            return error("bad_verification_code", "The code passed is incorrect or expired.")
        if form.get("redirect_uri") and form["redirect_uri"] != grant["redirect_uri"]:
            return error(
                "redirect_uri_mismatch",
                "The redirect_uri MUST match the registered callback URL for this application.",
            )
        if grant["challenge"] is not None:
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
                b"="
            )
            if grant["method"] != "S256" or digest.decode() != grant["challenge"]:
                return error(
                    "bad_verification_code", "The code_verifier does not match the code_challenge."
                )
        token = "gho_" + secrets.token_urlsafe(27)
        self.tokens[token] = grant["login"]
        return answer(
            {
                "access_token": token,
                "scope": "read:org,read:user,user:email",
                "token_type": "bearer",
            }
        )

    def _api(self, path: str, authorization: str) -> _Server.Reply:
        scheme, _, token = authorization.partition(" ")
        login = self.tokens.get(token) if scheme.lower() in ("bearer", "token") else None
        user = self.users.get(login or "")
        if user is None:
            return _json(
                401,
                {
                    "message": "Bad credentials",
                    "documentation_url": "https://docs.github.com/rest",
                    "status": "401",
                },
            )
        if path == "/user":
            public = next(
                (e["email"] for e in user.emails if e.get("visibility") == "public"), None
            )
            return _json(200, {
                "login": user.login, "id": user.id, "node_id": f"U_{user.id:08d}",
                "avatar_url": f"https://avatars.githubusercontent.com/u/{user.id}?v=4",
                "html_url": f"https://github.com/{user.login}", "type": "User", "site_admin": False,
                "name": user.name, "company": None, "email": public,
                "created_at": "2020-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            })  # fmt: skip
        if path == "/user/emails":
            return _json(200, user.emails)
        if path == "/user/orgs":
            return _json(200, [self._org(name) for name in user.orgs])
        if path == "/user/teams":
            return _json(200, [
                {"id": 1000 + i, "node_id": f"T_{i}", "name": slug.title(), "slug": slug,
                 "description": None, "privacy": "closed", "permission": "pull",
                 "parent": None, "organization": self._org(org)}
                for i, (org, slug) in enumerate(t.split("/", 1) for t in user.teams)
            ])  # fmt: skip
        return _json(404, {"message": "Not Found"})

    @staticmethod
    def _org(login: str) -> dict[str, Any]:
        oid = int(hashlib.sha256(login.encode()).hexdigest()[:6], 16)
        return {
            "login": login,
            "id": oid,
            "node_id": f"O_{oid}",
            "url": f"https://api.github.com/orgs/{login}",
            "description": None,
        }


class EnterpriseIdp(_Server):
    """Signs ID-JAG assertions with a test key and serves its JWKS."""

    def __init__(self, issuer: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = uuid.uuid4().hex[:16]
        self.jwks_hits = 0
        super().__init__(host, port)

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def route(
        self, method: str, path: str, query: dict[str, str], headers: Any, body: str
    ) -> _Server.Reply:
        if method == "GET" and path == "/jwks.json":
            self.jwks_hits += 1
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
            return _json(200, {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}]})
        return _json(404, {"error": "not_found"})

    def assertion(
        self,
        *,
        audience: str,
        client_id: str,
        subject: str,
        resource: str | list[str] | None,
        typ: str = ID_JAG_TYP,
        key: ec.EllipticCurvePrivateKey | None = None,
        **claims: Any,
    ) -> str:
        """An ID-JAG as the IdP would issue it; `claims` override or add (None removes)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer, "sub": subject, "aud": audience, "client_id": client_id,
            "jti": uuid.uuid4().hex, "iat": now, "exp": now + 300, "resource": resource,
            "auth_time": now - 5, "amr": ["pwd", "mfa"],
        }  # fmt: skip
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(
            body, key or self.key, algorithm="ES256", headers={"typ": typ, "kid": self.kid}
        )


def parse_redirect(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
