"""Server-rendered login, consent and error pages (docs/architecture.md, form contract).

Every page carries a strict CSP: no script at all, styles only from our own stylesheet,
and forms that post only to this origin and, where the page can end the authorization
request, to the origin of that request's redirect URI. Chromium applies `form-action` to
the redirect that follows a form POST, so without that origin the browser would refuse
the 302 back to the client. Framing is refused and nothing is cached.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from bastion_auth.clients import clean_host

__all__ = ["STATIC_DIR", "STATIC_PATH", "csp", "form_target", "render", "security_headers"]

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/static"
PRODUCT = "MCP Bastion"

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    auto_reload=False,
)
_env.globals.update(product=PRODUCT, static=STATIC_PATH)

# A scheme that may stand as a CSP scheme-source (the host check is `clean_host`).
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")


def form_target(redirect_uri: str) -> str | None:
    """The CSP source expression that lets a form's redirect reach `redirect_uri`: its
    origin for http(s), its scheme for a private-use scheme (RFC 8252 §7.1). None when
    the URI does not give a clean expression (then the page allows 'self' only)."""
    try:
        parts = urlsplit(redirect_uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not _SCHEME.match(scheme):
        return None
    if scheme not in ("http", "https"):
        return f"{scheme}:"
    host = clean_host(parts)
    if host is None:
        return None
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def csp(form_targets: Sequence[str] = ()) -> str:
    forms = " ".join(["'self'", *form_targets])
    return (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        f"form-action {forms}; frame-ancestors 'none'; base-uri 'none'"
    )


def security_headers(form_targets: Sequence[str] = ()) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp(form_targets),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
    }


def render(
    template: str, status: int = 200, *, redirect_uri: str | None = None, **context: Any
) -> HTMLResponse:
    """A page; `redirect_uri` when one of its forms may end in a redirect to the client."""
    target = form_target(redirect_uri) if redirect_uri else None
    html = _env.get_template(template).render(**context)
    return HTMLResponse(
        html, status_code=status, headers=security_headers([target] if target else [])
    )
