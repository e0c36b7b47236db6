"""A person in Debian's Chromium (headless), for the sign-in pages.

Unlike `browser.HeadlessBrowser`, which posts the forms itself, this is a real browser:
it enforces the pages' CSP (form-action on the redirect after a POST included), cookie
scoping and redirects. It types the username and password, presses a button, and
waits for the browser to land on the client's callback, served by `Callback` (a real
HTTP server on localhost that records what the browser sent it).

Chromium comes from apt (`make integration` installs it) and is driven through
Playwright's Python package with `executable_path`: no browser is ever downloaded.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from playwright.async_api import Browser, BrowserContext, Playwright, async_playwright

__all__ = ["Callback", "Chromium", "Visit"]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"


@dataclass
class CallbackHit:
    path: str
    params: dict[str, str]
    cookie: str


class Callback:
    """The client's redirect URI: http://localhost:<port>/callback, the issuer's host."""

    def __init__(self) -> None:
        hits = self.hits = list[CallbackHit]()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                parts = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                hits.append(CallbackHit(parts.path, params, self.headers.get("Cookie", "")))
                body = b"<!doctype html><title>client</title><p>You may close this window."
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://localhost:{self._server.server_address[1]}/callback"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Visit:
    """One authorization in the browser: where it ended and what the console said."""

    url: str
    params: dict[str, str]
    console: list[str] = field(default_factory=list)
    session_cookie: str | None = None  # the sign-in cookie just before the last click
    cookies_after: list[str] = field(default_factory=list)


class Chromium:
    def __init__(self) -> None:
        self._pw: Playwright | None = None
        self._browser: Browser | None = None

    async def __aenter__(self) -> Chromium:
        executable = shutil.which("chromium")
        assert executable, "Debian's chromium is missing: `make integration` installs it"
        self._pw = await async_playwright().start()
        self._browser = await self._pw.chromium.launch(
            executable_path=executable,
            # The test OpenID provider's issuer host is the loopback address here, as it
            # is the idp container's network alias inside the stack.
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--host-resolver-rules=MAP idp.bastion.test 127.0.0.1",
            ],
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._pw is not None:
            await self._pw.stop()

    async def context(self) -> BrowserContext:
        assert self._browser is not None
        return await self._browser.new_context()

    async def authorize(
        self,
        url: str,
        callback: str,
        *,
        username: str,
        password: str,
        decision: str = "allow",
        screenshots: str | None = None,
        context: BrowserContext | None = None,
        via: str | None = None,
    ) -> Visit:
        """Open `url`, sign in (or press Cancel when decision is "cancel"), press the
        decision on the consent page, and wait for the browser to reach `callback`.
        With `via`, sign in through that identity provider's link and its own form."""
        ctx = context or await self.context()
        page = await ctx.new_page()
        console: list[str] = []
        page.on(
            "console",
            lambda m: console.append(f"{m.type}: {m.text} @ {m.location.get('url', '')}"),
        )
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
        try:
            await page.goto(url)
            await page.wait_for_selector("button[value=cancel]")
            if screenshots:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=SCREENSHOTS / f"{screenshots}-login.png", full_page=True)
            if decision == "cancel":
                session = await _session_cookie(ctx)
                await page.get_by_role("button", name="Cancel").click()
            elif via is not None:
                await page.get_by_role("link", name=f"Sign in with {via}").click()
                await page.wait_for_selector("input[name=login]")
                if screenshots:
                    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                    await page.screenshot(
                        path=SCREENSHOTS / f"{screenshots}-idp.png", full_page=True
                    )
                await page.fill("input[name=login]", username)
                await page.fill("input[name=password]", password)
                await page.get_by_role("button", name="Sign in").click()
                await page.wait_for_selector("button[value=allow]")
                session = await _session_cookie(ctx)
                label = "Allow" if decision == "allow" else "Deny"
                await page.get_by_role("button", name=label, exact=True).click()
            else:
                await page.fill("#username", username)
                await page.fill("#password", password)
                await page.get_by_role("button", name="Sign in").click()
                await page.wait_for_selector("button[value=allow]")
                if screenshots:
                    await page.screenshot(
                        path=SCREENSHOTS / f"{screenshots}-consent.png", full_page=True
                    )
                session = await _session_cookie(ctx)
                label = "Allow" if decision == "allow" else "Deny"
                await page.get_by_role("button", name=label, exact=True).click()
            await page.wait_for_url(f"{callback}?*", timeout=10_000)
            query = parse_qs(urlsplit(page.url).query)
            return Visit(
                page.url,
                {k: v[0] for k, v in query.items()},
                console,
                session,
                [c["name"] for c in await ctx.cookies()],
            )
        except Exception as exc:
            # Say where the person got stuck and what the browser complained about.
            raise AssertionError(f"stuck at {page.url}: {exc}; console: {console}") from exc
        finally:
            await page.close()
            if context is None:
                await ctx.close()


async def _session_cookie(ctx: BrowserContext) -> str | None:
    for cookie in await ctx.cookies():
        if cookie["name"] == "bastion_session":
            return cookie["value"]
    return None
