"""Access tokens signed by the running auth with its real key, with the times a test
needs: already expired, short-lived, or from a node whose clock is off.

The token is made inside the auth container, with its settings, its Redis and its
current signing key, so tools and keys judge it exactly like one auth issued (no test
key is trusted anywhere). Used where waiting for a real token to expire would cost a
minute or more.
"""

from __future__ import annotations

from tests.integration.conftest import Stack

_MINT = """
import asyncio, sys, time, uuid
from bastion_auth.keys import KeyRing
from bastion_auth.settings import Settings
from bastion_common.redis import create_redis
from bastion_common.settings import load_settings

async def main(offset, lifetime, resource, subject, scope):
    settings = load_settings(Settings)
    redis = create_redis(settings.redis_url.get_secret_value())
    now = int(time.time() + offset)
    claims = {"iss": settings.issuer, "sub": subject, "aud": resource,
              "iat": now, "nbf": now, "exp": now + lifetime, "jti": uuid.uuid4().hex,
              "client_id": "minted-for-a-test", "scope": scope, "roles": ["user"]}
    print(await KeyRing(redis, settings).sign(claims))
    await redis.aclose()

asyncio.run(main(float(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]))
"""


def mint_token(
    stack: Stack,
    *,
    offset: float = 0,
    lifetime: int = 300,
    resource: str | None = None,
    subject: str = "minted-for-a-test",
    scope: str = "weather:read",
) -> str:
    """A token whose iat/nbf are now + `offset` seconds and whose exp is `lifetime` after."""
    audience = resource or f"{stack.urls['tools']}/mcp"
    argv = (str(offset), str(lifetime), audience, subject, scope)
    out = stack.exec("auth", "python", "-c", _MINT, *argv)
    return out.strip().splitlines()[-1]
