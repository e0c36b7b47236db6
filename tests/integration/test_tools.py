"""The tools container in the running stack: discovery, refusals, its sandbox volume.

Token flows through auth are exercised in test_roles / test_attacks; this file checks what
the tools server does on its own: RFC 9728 metadata naming the stack's auth, the 401
challenge, a forged token and a foreign Origin refused, and the sandbox usable on the
read-only container file system (a named volume at /sandbox).
"""

from __future__ import annotations

import json
import time
import uuid

import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.conftest import Stack
from tests.integration.test_gateway import POLICY

MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-06-18",
}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def test_protected_resource_metadata_names_the_stacks_auth(stack: Stack) -> None:
    for path in (
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ):
        document = httpx2.get(f"{stack.urls['tools']}{path}").json()
        assert document["resource"] == f"{stack.urls['tools']}/mcp"
        assert document["authorization_servers"] == [stack.urls["auth"]]
        assert "offline_access" not in document["scopes_supported"]
        # Every permission the stack's policy file offers: the seven built-in, the upstreams'.
        assert set(document["scopes_supported"]) == POLICY.role_table.offered


def test_no_token_gets_the_challenge_and_a_forged_one_is_refused(stack: Stack) -> None:
    url = f"{stack.urls['tools']}/mcp"
    bare = httpx2.post(url, json=LIST, headers=MCP_HEADERS)
    assert bare.status_code == 401
    challenge = bare.headers["www-authenticate"]
    assert (
        f'resource_metadata="{stack.urls["tools"]}/.well-known/oauth-protected-resource/mcp"'
        in (challenge)
    )
    assert 'scope="' in challenge
    now = int(time.time())
    forged = jwt.encode(
        {"iss": stack.urls["auth"], "sub": "mallory", "aud": url, "iat": now, "nbf": now,
         "exp": now + 300, "jti": uuid.uuid4().hex, "scope": "admin:users", "roles": ["admin"]},
        ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
        headers={"typ": "at+jwt", "kid": "not-the-auth-key"},
    )  # fmt: skip
    refused = httpx2.post(
        url, json=LIST, headers={**MCP_HEADERS, "Authorization": f"Bearer {forged}"}
    )
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    evil = httpx2.post(url, json=LIST, headers={**MCP_HEADERS, "Origin": "https://evil.example",
                                                  "Authorization": f"Bearer {forged}"})  # fmt: skip
    assert evil.status_code == 403
    logs = stack.logs("tools")
    assert forged not in logs
    assert "Traceback" not in logs


def test_the_sandbox_volume_works_on_the_read_only_container(stack: Stack) -> None:
    script = (
        "from bastion_tools.tools.sandbox import Sandbox, SandboxError\n"
        "import json\n"
        "s = Sandbox('/sandbox', extensions=['.txt'], max_bytes=1024)\n"
        "s.write('it/check.txt', 'ok')\n"
        "out = {'read': s.read('it/check.txt')}\n"
        "s.delete('it/check.txt')\n"
        "try:\n    s.read('../etc/passwd')\n"
        "except SandboxError as e:\n    out['refused'] = str(e)\n"
        "print(json.dumps(out))\n"
    )
    out = stack.exec("tools", "python", "-c", script)
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"read": "ok", "refused": "path must not contain '..'"}
