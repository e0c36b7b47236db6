"""A corpus of malformed tokens at every endpoint of the stack that takes one: each is
refused with a clear 4xx and an OAuth (or JSON-RPC) error body (introspection answers
`{"active": false}`, as RFC 7662 says), never a 5xx, never a stack trace, and quickly
(what cannot parse is refused before any signature work; the slowest answer per
endpoint is printed and bounded).
"""

from __future__ import annotations

import base64
import json
import statistics
import time

import httpx2
import pytest

from tests.integration.conftest import Stack
from tests.integration.oauth import OAuthClient

pytestmark = pytest.mark.anyio


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(header: object, payload: object, signature: str = "c2ln") -> str:
    return ".".join(
        (_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), signature)
    )


def _nested(depth: int) -> str:
    """JSON nested `depth` objects deep (too deep for json.dumps to write)."""
    return '{"a":' * depth + "{}" + "}" * depth


def _raw_jwt(header: str, payload: str) -> str:
    return ".".join((_b64(header.encode()), _b64(payload.encode()), "c2ln"))


CLAIMS = {"iss": "x", "aud": "x", "sub": "x", "exp": 4102444800, "iat": 0, "scope": "x"}
CORPUS: dict[str, str] = {
    "empty-ish": "x",
    "truncated": _jwt({"alg": "RS256", "typ": "at+jwt"}, CLAIMS)[:40],
    "two parts": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
    "four parts": "a.b.c.d",
    "bad base64": "!!!.@@@.###",
    "bad utf-8": ".".join((_b64(b"\xff\xfe\xfd"), _b64(b"\xc3\x28"), "c2ln")),
    "not json": ".".join((_b64(b"not json"), _b64(b"{"), "c2ln")),
    "alg none": _jwt({"alg": "none", "typ": "at+jwt"}, CLAIMS, signature=""),
    "alg HS256 (confusion)": _jwt({"alg": "HS256", "typ": "at+jwt"}, CLAIMS),
    "header not an object": _jwt([1, 2, 3], CLAIMS),
    "deeply nested header": _raw_jwt(_nested(5000), json.dumps(CLAIMS)),
    "deeply nested payload": _raw_jwt('{"alg": "RS256"}', _nested(5000)),
    "oversized (7 KB)": _jwt({"alg": "RS256", "kid": "k" * 5000}, CLAIMS),
    "mcp_ key, wrong shape": "mcp_" + "!" * 10,
    "mcp_ key, too long": "mcp_" + "a" * 4000,
    "mcp_ key, empty": "mcp_",
    "non-ascii": "tökén.ünïcödé.✓",
}
TRACE_MARKERS = ("Traceback", 'File "/', "jwt.exceptions", "pydantic_core")


def _bearer(token: str) -> dict[bytes, bytes]:
    # Bytes: the client would refuse to send a header that is not ASCII.
    return {b"Authorization": f"Bearer {token}".encode()}


async def _send(http: httpx2.AsyncClient, stack: Stack, client_id: str, where: str,
                token: str) -> httpx2.Response:  # fmt: skip
    auth, keys, tools, audit = (stack.urls[s] for s in ("auth", "keys", "tools", "audit"))
    if where == "tools /mcp":
        return await http.post(
            f"{tools}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={**_bearer(token), b"Accept": b"application/json, text/event-stream"},
        )
    if where == "keys /token":
        return await http.post(f"{keys}/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": token,
            "subject_token_type": "urn:mcp-secure:api-key",
            "resource": f"{tools}/mcp",
        })  # fmt: skip
    if where == "keys /v1/keys":
        return await http.get(f"{keys}/v1/keys", headers=_bearer(token))
    if where == "auth /admin/users":
        return await http.get(f"{auth}/admin/users", headers=_bearer(token))
    if where == "auth /token refresh":
        return await http.post(f"{auth}/token", data={
            "grant_type": "refresh_token", "refresh_token": token, "client_id": client_id,
        })  # fmt: skip
    if where == "auth /revoke":
        return await http.post(f"{auth}/revoke", data={"token": token, "client_id": client_id})
    if where == "auth /introspect":  # as tools, the confidential client that may ask
        tools_client = ("bastion-tools", stack.env["TOOLS_CLIENT_SECRET"])
        return await http.post(f"{auth}/introspect", data={"token": token}, auth=tools_client)
    assert where == "audit /v1/events"
    return await http.get(f"{audit}/v1/events", headers=_bearer(token))


ENDPOINTS = (
    "tools /mcp", "keys /token", "keys /v1/keys", "auth /admin/users", "auth /token refresh",
    "auth /revoke", "auth /introspect", "audit /v1/events",
)  # fmt: skip


@pytest.mark.parametrize("where", ENDPOINTS)
async def test_every_malformed_token_is_refused_clearly_and_quickly(
    stack: Stack, where: str
) -> None:
    client = await OAuthClient.register(stack.urls["auth"], "malformed-corpus")
    seconds: dict[str, float] = {}
    async with httpx2.AsyncClient(timeout=10) as http:
        for name, token in CORPUS.items():
            started = time.perf_counter()
            response = await _send(http, stack, client.client_id, where, token)
            seconds[name] = time.perf_counter() - started
            text = response.text
            assert not any(m in text for m in TRACE_MARKERS), (name, text[:300])
            assert token not in text or len(token) < 8, (name, "the token is echoed back")
            if where == "auth /revoke" and response.status_code == 200:
                continue  # RFC 7009 §2.2: an invalid token is answered 200 (nothing to revoke)
            if where == "auth /introspect" and response.status_code == 200:
                # RFC 7662 §2.2: inactive, and nothing more (a form too big to read is 400)
                assert response.json() == {"active": False}, (name, text[:300])
                continue
            assert 400 <= response.status_code < 500, (name, response.status_code, text[:300])
            body = response.json()
            if where == "tools /mcp" and "error" in body and isinstance(body["error"], dict):
                assert body["error"].get("message"), (name, body)
            else:
                assert isinstance(body.get("error"), str) and body["error"], (name, body)
    slowest = max(seconds, key=seconds.__getitem__)
    print(  # noqa: T201 - the figures
        f"\nmalformed tokens at {where}: {len(CORPUS)} refused, median "
        f"{statistics.median(seconds.values()) * 1000:.1f} ms, slowest {slowest!r} "
        f"{seconds[slowest] * 1000:.1f} ms"
    )
    assert seconds[slowest] < 1.0, seconds
