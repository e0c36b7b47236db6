"""A headless "browser" for the login and consent pages (docs/architecture.md form contract).

It does what a person's browser does: follows the authorization URL, reads each HTML
form, posts all of its inputs back (filling `username` / `password` on the login form,
pressing `decision=allow|deny` on the consent page), keeps the session cookie, and stops
at the redirect to the client's redirect URI, whose query it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2


@dataclass
class Form:
    action: str
    method: str
    inputs: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif self.forms and tag in ("input", "button"):
            name = a.get("name")
            if not name:
                return
            kind = a.get("type", "submit" if tag == "button" else "text").lower()
            if kind == "submit":
                self.forms[-1].buttons.append((name, a.get("value", "")))
            else:
                self.forms[-1].inputs[name] = a.get("value", "")


def parse_forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


@dataclass
class BrowserResult:
    redirect: str
    params: dict[str, str]
    pages: list[httpx2.Response]


class HeadlessBrowser:
    def __init__(self, username: str, password: str, *, decision: str = "allow") -> None:
        self.username = username
        self.password = password
        self.decision = decision
        self.client = httpx2.AsyncClient(follow_redirects=False, timeout=10)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def authorize(
        self, url: str, redirect_prefix: str, *, max_steps: int = 10
    ) -> BrowserResult:
        pages: list[httpx2.Response] = []
        response = await self.client.get(url)
        for _ in range(max_steps):
            pages.append(response)
            if response.status_code in (301, 302, 303, 307, 308):
                location = urljoin(str(response.url), response.headers["location"])
                if location.startswith(redirect_prefix):
                    query = parse_qs(urlsplit(location).query)
                    return BrowserResult(location, {k: v[0] for k, v in query.items()}, pages)
                response = await self.client.get(location)
                continue
            if response.status_code != 200:
                raise AssertionError(f"authorization stopped at {response.status_code}")
            forms = parse_forms(response.text)
            if not forms:
                raise AssertionError("authorization page has no form")
            form = forms[0]
            data = dict(form.inputs)
            if "username" in data or "password" in data:
                data["username"] = self.username
                data["password"] = self.password
                # Press "Sign in" (unnamed), never the named Cancel button.
            else:
                data["decision"] = self.decision
            action = urljoin(str(response.url), form.action or str(response.url))
            response = await self.client.post(action, data=data)
        raise AssertionError("too many steps in the authorization flow")
