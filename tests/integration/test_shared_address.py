"""A shared address cannot lock everyone out, in the stack: from one address (the keys
container, so no other test shares it) junk tokens are sent to tools until its address
bucket refuses them with 429; then a valid token from that same address is served. The
flood is kept off the host's address, which every other test uses."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import Stack
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
