"""A shared address cannot lock everyone out, in the stack: from one address (another
container, so no other test shares it) junk is sent until the address's budget refuses
it with 429; then a valid credential from that same address is served. At tools (junk
tokens from the keys container) and at keys' /token (junk API keys from the audit
container). The floods are kept off the host's address, which every other test uses."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.integration.conftest import Stack
from tests.integration.oauth import OAuthClient
from tests.integration.test_attacks import admin_tools_token

pytestmark = pytest.mark.anyio

# In the keys container: junk to tools, then the valid token; each answer's status.
FLOOD = """
import json, sys, urllib.request, urllib.error
host, token = sys.argv[1], sys.argv[2]
body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "it", "version": "1"}}}).encode()
def post(bearer):
    req = urllib.request.Request("http://tools:8000/mcp", data=body, method="POST", headers={
        "Host": host, "Authorization": "Bearer " + bearer, "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream"})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
junk = [post("junk.token.value") for _ in range(45)]
print(json.dumps({"junk": junk, "valid": post(token), "junk_after": post("junk.token.value")}))
"""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_junk_from_an_address_does_not_lock_out_a_valid_token_from_it(
    stack: Stack,
) -> None:
    token = (await admin_tools_token(stack))["access_token"]
    host = urlsplit(stack.urls["tools"]).netloc
    out = stack.exec("keys", "python", "-c", FLOOD, host, token)
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["junk"][:30]) == {401}  # the address's budget of failures
    assert 429 in result["junk"][30:]  # then refused from memory
    assert result["valid"] == 200  # a token that verifies is served all the same
    assert result["junk_after"] == 429


# In the audit container: junk API keys to keys' /token, then the valid key.
EXCHANGE_FLOOD = """
import json, secrets, sys, urllib.parse, urllib.request, urllib.error
key, resource = sys.argv[1], sys.argv[2]
def exchange(subject):
    form = urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject, "subject_token_type": "urn:mcp-secure:api-key",
        "resource": resource}).encode()
    req = urllib.request.Request("http://keys:8000/token", data=form, method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
junk = [exchange("mcp_" + secrets.token_urlsafe(32)) for _ in range(25)]
print(json.dumps({"junk": junk, "valid": exchange(key), "junk_after": exchange("mcp_x" * 9)}))
"""


async def test_junk_keys_from_an_address_do_not_lock_out_a_valid_key_from_it(
    stack: Stack,
) -> None:
    keys, tools_uri = stack.urls["keys"], f"{stack.urls['tools']}/mcp"
    admin = (stack.env["BOOTSTRAP_ADMIN_USERNAME"], stack.env["BOOTSTRAP_ADMIN_PASSWORD"])
    client = await OAuthClient.register(stack.urls["auth"], "it-shared-address")
    owner = await client.token(*admin, resource=keys, scope="weather:read")
    async with httpx2.AsyncClient(timeout=15) as http:
        created = await http.post(
            f"{keys}/v1/keys", json={"name": "shared", "permissions": ["weather:read"]},
            headers={"Authorization": f"Bearer {owner['access_token']}"},
        )  # fmt: skip
    assert created.status_code == 201, created.text
    out = stack.exec("audit", "python", "-c", EXCHANGE_FLOOD, created.json()["api_key"], tools_uri)
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["junk"][:20]) == {400}  # invalid_grant, within the budget (20)
    assert set(result["junk"][20:]) == {429}
    assert result["valid"] == 200
    assert result["junk_after"] == 429
