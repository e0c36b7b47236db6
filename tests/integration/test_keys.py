"""The keys container in the running stack: a machine client's whole life.

The bootstrap admin logs in through auth for the keys resource, makes an API key, and
the key is used at the tools server both ways (exchanged for a token, and directly as a
bearer value); revoking it stops all three (the exchange, the exchanged token through
the denylist, the direct key through the revocation feed). Also: discovery names the
stack's keys URL, and neither Redis nor the logs ever hold the key.
"""

from __future__ import annotations

import anyio
import httpx2
import pytest

from tests.integration.conftest import Stack
from tests.integration.mcp_http import McpHttp
from tests.integration.oauth import OAuthClient

pytestmark = pytest.mark.anyio

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

# Run inside the redis container: everything ever written to Redis, from its append-only
# file (no service may SCAN or read another's keys, so none could list them all).
REDIS_DUMP = """
import glob, sys
for name in sorted(glob.glob("/data/appendonlydir/*.aof")):
    with open(name, "rb") as fh:
        sys.stdout.write(fh.read().decode("utf-8", "backslashreplace"))
"""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def test_discovery_names_the_stacks_keys_issuer(stack: Stack) -> None:
    keys = stack.urls["keys"]
    meta = httpx2.get(f"{keys}/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == keys and meta["jwks_uri"] == f"{keys}/jwks.json"
    assert httpx2.get(f"{keys}/jwks.json").json()["keys"][0]["alg"] == "ES256"
    bare = httpx2.get(f"{keys}/v1/keys")
    assert bare.status_code == 401 and bare.json()["error"] == "invalid_token"


async def test_a_machine_clients_key_works_at_tools_until_revoked(stack: Stack) -> None:
    keys, tools_uri = stack.urls["keys"], f"{stack.urls['tools']}/mcp"
    admin = (stack.env["BOOTSTRAP_ADMIN_USERNAME"], stack.env["BOOTSTRAP_ADMIN_PASSWORD"])
    client = await OAuthClient.register(stack.urls["auth"], "it-keys")
    owner = await client.token(*admin, resource=keys, scope="weather:read weather:write")
    headers = {"Authorization": f"Bearer {owner['access_token']}"}
    async with httpx2.AsyncClient(timeout=15) as http:
        refused = await http.post(
            f"{keys}/v1/keys", json={"name": "ci", "permissions": ["files:delete"]},
            headers=headers,
        )  # fmt: skip
        assert refused.status_code == 403, refused.text  # not in the token's scopes
        created = await http.post(
            f"{keys}/v1/keys", json={"name": "ci", "permissions": ["weather:read"]},
            headers=headers,
        )  # fmt: skip
        assert created.status_code == 201, created.text
        api_key, key_id = created.json()["api_key"], created.json()["key_id"]

        form = {"grant_type": EXCHANGE, "subject_token": api_key,
                "subject_token_type": "urn:mcp-secure:api-key", "resource": tools_uri}  # fmt: skip
        exchanged = await http.post(f"{keys}/token", data=form)
        assert exchanged.status_code == 200, exchanged.text
        assert exchanged.json()["scope"] == "weather:read"
        token = exchanged.json()["access_token"]
        # keys offers only resources that trust its tokens: not itself (nor audit, admin).
        elsewhere = await http.post(f"{keys}/token", data={**form, "resource": keys})
        assert elsewhere.status_code == 400 and elsewhere.json()["error"] == "invalid_target"

        for bearer in (token, api_key):
            mcp = McpHttp(tools_uri, bearer)
            assert (await mcp.initialize(http)).status == 200
            ok = await mcp.call_tool(http, "get_weather", {"city": "Paris"})
            assert ok.status == 200 and ok.error is None, ok.body
            denied = await mcp.call_tool(
                http, "report_weather", {"city": "Paris", "temperature_c": 1, "condition": "x"}
            )
            assert denied.status == 403

        revoked = await http.delete(f"{keys}/v1/keys/{key_id}", headers=headers)
        assert revoked.status_code == 204
        again = await http.post(f"{keys}/token", data=form)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        with anyio.fail_after(3):
            for bearer in (token, api_key):
                while (await McpHttp(tools_uri, bearer).initialize(http)).status != 401:
                    await anyio.sleep(0.1)

    with anyio.fail_after(5):  # the append-only file is written every second
        while key_id not in (dump := stack.exec("redis", "python3", "-c", REDIS_DUMP)):
            await anyio.sleep(0.2)
    assert api_key.removeprefix("mcp_") not in dump
    for service in ("keys", "tools"):
        logs = stack.logs(service)
        assert api_key.removeprefix("mcp_") not in logs and token not in logs
        assert "Traceback" not in logs
