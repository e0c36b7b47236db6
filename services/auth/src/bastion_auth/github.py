"""GitHub as a sign-in provider: plain OAuth 2.0 (RFC 6749 §4.1 with PKCE, RFC 7636), no
ID token. Who the person is comes from GitHub's REST API with the access token:

- `GET /user`: the numeric `id` (the subject we link by; a login can be renamed and
  taken by someone else, so it is only the username hint) and `login`;
- `GET /user/emails` (scope `user:email`): the primary address, only if GitHub says it
  is verified;
- `GET /user/orgs` and `GET /user/teams` (scope `read:org`): organisations (`acme`) and
  teams (`acme/admins`), given to role rules and the allowlist as `groups`.

GitHub answers a token request with HTTP 200 even when it refuses (`{"error": ...}`),
and in form encoding unless asked for JSON (`Accept: application/json`): both handled.
The access token is never logged; it is kept sealed in the link (`linking`) because a
GitHub OAuth token does not expire, so our refresh asks the API again with it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx2

from bastion_auth.linking import FederationError
from bastion_auth.settings import GitHubProvider
from bastion_common.logging import get_logger

__all__ = ["GitHubApi"]

log = get_logger(__name__)
API_VERSION = "2022-11-28"
PAGE = {"per_page": "100"}  # one page of each list; more orgs or teams than that are cut


class GitHubApi:
    def __init__(self, config: GitHubProvider, http: httpx2.AsyncClient) -> None:
        self.config = config
        self._http = http
        self._api = config.api_url.rstrip("/")

    def authorization_url(self, redirect_uri: str, state: str, challenge: str) -> str:
        query = {
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "allow_signup": "false",
        }
        return f"{self.config.authorize_url}?{urlencode(query)}"

    def _unreachable(self) -> FederationError:
        return FederationError(
            f"{self.config.name} cannot be reached right now. Try again in a moment, or cancel.",
            "provider unreachable",
            unavailable=True,
        )

    def _refused(self, reason: str) -> FederationError:
        message = f"{self.config.name} did not confirm the sign-in. Start again."
        return FederationError(message, reason)

    async def exchange(self, code: str, verifier: str, redirect_uri: str) -> str:
        """The access token for `code` (POST /login/oauth/access_token)."""
        data = {
            "client_id": self.config.client_id,
            "client_secret": self.config.secret,
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        try:
            response = await self._http.post(
                self.config.token_url, data=data, headers={"Accept": "application/json"}
            )
        except httpx2.HTTPError:
            raise self._unreachable() from None
        if response.status_code >= 500:
            raise self._unreachable()
        body: Any
        if "json" in response.headers.get("content-type", ""):
            try:
                body = response.json()
            except ValueError:
                body = None
        else:  # the default form-encoded answer, should a proxy drop our Accept
            body = dict(parse_qsl(response.text))
        if not isinstance(body, dict) or response.status_code != 200:
            raise self._refused(f"token endpoint answered {response.status_code}")
        if body.get("error"):
            raise self._refused(f"token endpoint refused: {str(body['error'])[:64]}")
        token = body.get("access_token")
        bearer = str(body.get("token_type")).lower() == "bearer"
        if not isinstance(token, str) or not token or not bearer:
            raise self._refused("token endpoint sent no bearer token")
        return token

    async def _get(self, token: str, path: str, params: dict[str, str] | None = None) -> Any:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
        }
        try:
            response = await self._http.get(f"{self._api}{path}", headers=headers, params=params)
        except httpx2.HTTPError:
            raise self._unreachable() from None
        if response.status_code in (401, 403):
            # The token was revoked, or the app's access was withdrawn.
            raise FederationError("Sign in again.", f"GitHub API refused {path}")
        if response.status_code != 200:
            raise self._unreachable()
        try:
            return response.json()
        except ValueError:
            raise self._unreachable() from None

    async def claims(self, token: str) -> dict[str, Any]:
        """The person behind `token`, as claims for `linking`."""
        user = await self._get(token, "/user")
        uid = user.get("id") if isinstance(user, dict) else None
        # bool is an int: GitHub's ids are positive integers, nothing else.
        if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
            raise self._refused("GitHub /user has no numeric id")
        claims: dict[str, Any] = {"sub": str(uid), "login": str(user.get("login") or "")}
        emails = await self._get(token, "/user/emails", PAGE)
        for entry in emails if isinstance(emails, list) else []:
            if isinstance(entry, dict) and entry.get("primary") and entry.get("verified") is True:
                claims["email"], claims["email_verified"] = str(entry.get("email")), True
        orgs = await self._get(token, "/user/orgs", PAGE)
        teams = await self._get(token, "/user/teams", PAGE)
        org_names = [str(o["login"]) for o in _dicts(orgs) if o.get("login")]
        team_names = [
            f"{t['organization']['login']}/{t['slug']}"
            for t in _dicts(teams)
            if t.get("slug")
            and isinstance(t.get("organization"), dict)
            and t["organization"].get("login")
        ]
        claims["orgs"], claims["teams"] = org_names, team_names
        claims["groups"] = org_names + team_names
        log.info("github.identity", provider=self.config.id, orgs=len(org_names))
        return claims


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
