"""The guard: every token attack of issue 4 is refused with 401, the RFC 9728 challenge
and an `authn.failed` audit event; Origin/Host checks; issuer down; fail closed."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from services.tools.tests.helpers import (
    AUTH_ISSUER,
    KEYS_ISSUER,
    MCP_HEADERS,
    PUBLIC_URL,
    RESOURCE,
    Minter,
    SigningKey,
    Upstreams,
    open_session,
    post,
    rpc,
    serve,
    wait_for_event,
)

from bastion_common.redis import create_redis
from bastion_common.tokens import Principal, denylist_key, token_fingerprint
from bastion_tools.app import create_app
from bastion_tools.guard.limits import Plans
from bastion_tools.settings import Settings

pytestmark = pytest.mark.anyio

METADATA_URL = "http://localhost:8003/.well-known/oauth-protected-resource/mcp"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _challenge_ok(response: httpx2.Response, *, error: str | None) -> str:
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{METADATA_URL}"' in challenge
    assert 'scope="' in challenge and "offline_access" not in challenge
    if error:
        assert f'error="{error}"' in challenge
    else:
        assert "error=" not in challenge
    return challenge


async def test_protected_resource_metadata_names_auth_and_the_seven_scopes(
    tools: httpx2.AsyncClient,
) -> None:
    for path in (
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ):
        document = (await tools.get(path)).json()
        assert document["resource"] == RESOURCE
        assert document["authorization_servers"] == [AUTH_ISSUER]
        assert set(document["scopes_supported"]) == {
            "weather:read",
            "weather:write",
            "files:read",
            "files:write",
            "files:delete",
            "admin:users",
            "metrics:view",
        }
    assert (await tools.get("/healthz")).status_code == 200


async def test_a_call_without_token_gets_401_with_the_challenge(
    tools: httpx2.AsyncClient, redis_url: str
) -> None:
    reply = await post(tools, None, rpc("tools/list"))
    assert reply.status_code == 401
    _challenge_ok(reply, error=None)
    await wait_for_event(redis_url, "authn.failed", reason="missing_token", ip="10.0.0.7")


def _attacks(m: Minter, upstreams: Upstreams) -> dict[str, str]:
    real = m.token()
    header, payload, signature = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    public_pem = (
        upstreams.auth_keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return {
        "expired": m.token(expires_in=-120),
        "not_yet_valid": m.token(not_before=int(time.time()) + 600),
        "wrong_audience": m.token(aud="http://localhost:8004"),
        "audience_list_with_other": m.token(aud=[RESOURCE, "http://evil.example"]),
        "wrong_issuer": m.token(iss="https://evil.example"),
        "alg_none": _b64({"alg": "none", "typ": "at+jwt", "kid": "auth-1"}) + "." + payload + ".",
        "hs256_with_public_key": _hs_with_key(claims, public_pem),
        "unknown_kid": m.token(key=SigningKey("nobody-knows")),
        "forged_signature": header + "." + payload + "." + signature[::-1],
        "wrong_typ": m.token(headers={"typ": "JWT"}),
        "no_jti": m.token(drop=("jti",)),
        "garbage": "not-a-jwt",
        "keys_issuer_signed_with_auth_key": m.token(iss=KEYS_ISSUER, key=upstreams.auth_keys[0]),
    }


def _hs_with_key(claims: dict[str, Any], key: bytes) -> str:
    """HS256 signed with the issuer's public key as the secret: the key-confusion attack."""
    head = _b64({"alg": "HS256", "typ": "at+jwt", "kid": "auth-1"})
    body = _b64(claims)
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "attack",
    [
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "audience_list_with_other",
        "wrong_issuer",
        "alg_none",
        "hs256_with_public_key",
        "unknown_kid",
        "forged_signature",
        "wrong_typ",
        "no_jti",
        "garbage",
        "keys_issuer_signed_with_auth_key",
    ],
)
async def test_token_attacks_are_refused_with_401_and_audited(
    attack: str, tools: httpx2.AsyncClient, minter: Minter, upstreams: Upstreams, redis_url: str
) -> None:
    token = _attacks(minter, upstreams)[attack]
    reply = await post(tools, token, rpc("tools/list"))
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"] == "invalid_token"
    _challenge_ok(reply, error="invalid_token")
    event = await wait_for_event(redis_url, "authn.failed", ip="10.0.0.7")
    assert event.outcome == "failure"
    assert token not in json.dumps(event.model_dump(mode="json"))


async def test_a_valid_token_opens_a_session_and_lists_tools(
    tools: httpx2.AsyncClient, minter: Minter
) -> None:
    token = minter.token(scope="weather:read")
    session = await open_session(tools, token)
    listed = await post(tools, token, rpc("tools/list", {}, 2), session=session)
    assert listed.status_code == 200, listed.text
    assert [t["name"] for t in listed.json()["result"]["tools"]] == ["get_weather"]
    assert listed.headers["ratelimit-policy"].startswith('"principal";q=200;')


async def test_a_revoked_token_is_refused(
    tools: httpx2.AsyncClient, minter: Minter, redis_url: str
) -> None:
    token = minter.token(jti="revoked-jti-1")
    session = await open_session(tools, token)
    redis = create_redis(redis_url)
    await redis.set(denylist_key("revoked-jti-1"), "1", ex=300)
    await redis.aclose()
    reply = await post(tools, token, rpc("tools/list", {}, 2), session=session)
    assert reply.status_code == 401
    _challenge_ok(reply, error="invalid_token")
    assert reply.json()["error_description"] == "token revoked"
    await wait_for_event(redis_url, "authn.failed", reason="token revoked", principal="alice")


async def test_a_disallowed_origin_gets_403_and_an_allowed_one_passes(
    tools: httpx2.AsyncClient, minter: Minter, redis_url: str
) -> None:
    token = minter.token()
    evil = await post(tools, token, rpc("tools/list"), headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    await wait_for_event(redis_url, "authz.denied", reason="origin_not_allowed")
    rebinding = await post(
        tools, token, rpc("tools/list"), headers={"Origin": "http://localhost.evil.example:8003"}
    )
    assert rebinding.status_code == 403
    host = await post(tools, token, rpc("tools/list"), headers={"Host": "attacker.example"})
    assert host.status_code == 421
    fine = await post(
        tools,
        token,
        rpc(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        ),
        headers={"Origin": "http://localhost:3000"},
    )
    assert fine.status_code == 200


async def test_configured_origins_and_hosts_are_honoured(
    make_settings: Callable[..., Settings], minter: Minter
) -> None:
    app = create_app(
        make_settings(
            allowed_hosts=["mcp.example.com"], allowed_origins=["https://app.example.com"]
        )
    )
    async with serve(app) as client:
        token = minter.token()
        headers = {"Host": "mcp.example.com", "Origin": "https://app.example.com"}
        init = rpc(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        )
        assert (await post(client, token, init, headers=headers)).status_code == 200
        localhost = await post(client, token, init)
        assert localhost.status_code == 421


async def test_cached_keys_keep_working_while_the_issuer_is_down(
    make_settings: Callable[..., Settings], minter: Minter, upstreams: Upstreams
) -> None:
    async with serve(create_app(make_settings())) as client:
        first = minter.token(sub="bob")
        # Without a session the SDK answers 400, after the guard has verified the token
        # (and cached the issuer's keys): that verification is what this call is for.
        assert (await post(client, first, rpc("tools/list"))).status_code == 400
        upstreams.stop()
        # A token never seen before, signed by the cached key: verified locally.
        fresh = minter.token(sub="carol")
        session = await open_session(client, fresh)
        listed = await post(client, fresh, rpc("tools/list", {}, 2), session=session)
        assert listed.status_code == 200
        # A key the issuer never published cannot be fetched: refused, fail closed.
        unknown = minter.token(key=SigningKey("rotated-in-while-down"))
        assert (await post(client, unknown, rpc("tools/list"))).status_code == 401


async def test_an_unknown_kid_refetches_at_most_once_per_interval(
    tools: httpx2.AsyncClient, minter: Minter, upstreams: Upstreams
) -> None:
    await post(tools, minter.token(), rpc("tools/list"))
    before = upstreams.jwks_fetches
    for _ in range(20):
        reply = await post(tools, minter.token(key=SigningKey("storm")), rpc("tools/list"))
        assert reply.status_code == 401  # 20 failures: the IP's bucket (30) still holds
    assert upstreams.jwks_fetches - before <= 1


async def test_a_rotated_key_is_picked_up_once_the_refetch_interval_allows(
    make_settings: Callable[..., Settings], minter: Minter, upstreams: Upstreams
) -> None:
    async with serve(create_app(make_settings(jwks_refetch_interval=0.2))) as client:
        new_key = SigningKey("auth-2")
        upstreams.auth_keys.append(new_key)
        token = minter.token(key=new_key)
        with anyio.fail_after(3):
            while (await post(client, token, rpc("tools/list"))).status_code == 401:
                await anyio.sleep(0.05)
        assert await open_session(client, token)


async def test_redis_down_refuses_calls_with_503(
    make_settings: Callable[..., Settings], minter: Minter, redis_server: Any
) -> None:
    async with serve(create_app(make_settings())) as client:
        token = minter.token()
        session = await open_session(client, token)
        redis_server.stop()
        try:
            reply = await post(client, token, rpc("tools/list", {}, 2), session=session)
            assert reply.status_code == 503
            assert "refused" in reply.json()["error"]["message"]
        finally:
            redis_server.start()


async def test_a_session_is_bound_to_its_principal(
    tools: httpx2.AsyncClient, minter: Minter, redis_url: str
) -> None:
    owner = minter.token(sub="alice")
    session = await open_session(tools, owner)
    same_user_other_token = minter.token(sub="alice")
    ok = await post(tools, same_user_other_token, rpc("tools/list", {}, 2), session=session)
    assert ok.status_code == 200
    thief = minter.token(sub="mallory")
    stolen = await post(tools, thief, rpc("tools/list", {}, 3), session=session)
    assert stolen.status_code == 404
    event = await wait_for_event(redis_url, "request.invalid", principal="mallory")
    assert event.details["reason"] == "unknown_or_foreign_session"
    assert event.details["session"] == session and event.outcome == "denied"


async def test_a_foreign_session_is_refused_and_recorded_by_the_guard_alone(
    make_settings: Callable[..., Settings], minter: Minter, redis_url: str
) -> None:
    """Without the request context around it (which notes the answer's status), the
    guard watches the answer itself: the same 404, the same record."""
    settings = make_settings()
    app = create_app(settings)
    guard = app.hot_routes[settings.mcp_path]  # type: ignore[attr-defined]
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=guard), base_url=PUBLIC_URL) as bare,
    ):
        session = await open_session(bare, minter.token(sub="alice"))
        stolen = await post(bare, minter.token(sub="mallory"), rpc("tools/list", {}, 2),
                            session=session)  # fmt: skip
    assert stolen.status_code == 404
    assert "x-request-id" not in stolen.headers  # no request context was there
    event = await wait_for_event(redis_url, "request.invalid", principal="mallory")
    assert event.details["reason"] == "unknown_or_foreign_session"
    assert event.details["session"] == session and event.outcome == "denied"


async def test_nothing_behind_the_guard_sees_the_bearer_credential(
    make_settings: Callable[..., Settings], minter: Minter
) -> None:
    """The SDK and the tools get the request without its Authorization header (the first
    of two decides, as everywhere), so no tool can read the token or pass it on."""
    settings = make_settings()
    app = create_app(settings)
    guard = app.hot_routes[settings.mcp_path]  # type: ignore[attr-defined]
    seen: list[dict[str, Any]] = []

    async def behind(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    good, forged = minter.token(sub="alice"), minter.token(sub="alice") + "x"
    async with serve(app) as client:
        assert guard.deps is not None
        guard.bind(behind, guard.rules, guard.deps)
        first_good = await client.post("/mcp", content=json.dumps(rpc("tools/list")), headers=[
            *MCP_HEADERS.items(), ("Authorization", f"Bearer {good}"),
            ("X-Kept", "1"), ("Authorization", f"Bearer {forged}"),
        ])  # fmt: skip
        first_forged = await client.post("/mcp", content=json.dumps(rpc("tools/list")), headers=[
            *MCP_HEADERS.items(), ("Authorization", f"Bearer {forged}"),
            ("Authorization", f"Bearer {good}"),
        ])  # fmt: skip
    assert first_good.status_code == 200 and first_forged.status_code == 401
    [scope] = seen
    names = [name for name, _ in scope["headers"]]
    assert b"authorization" not in names
    assert (b"x-kept", b"1") in scope["headers"] and b"content-type" in names
    assert scope["bastion.principal"].subject == "alice"


def _raw_post(client: httpx2.AsyncClient, token: str, content: bytes) -> Any:
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    return client.post("/mcp", content=content, headers=headers)


async def test_a_body_that_is_not_json_is_refused_counted_and_audited(
    tools: httpx2.AsyncClient, minter: Minter, redis_url: str
) -> None:
    token = minter.token(sub="garbler")
    reply = await _raw_post(tools, token, b'{"jsonrpc": "2.0", "method": ')
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == -32700
    assert ";r=" in reply.headers["ratelimit"]  # it paid for its request like any other
    event = await wait_for_event(redis_url, "request.invalid", principal="garbler")
    assert (event.details["reason"], event.outcome) == ("parse_error", "failure")


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}',  # a BOM
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "note": "\\ud800"}',
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"} trailing',
    ],
    ids=["bom", "lone-surrogate", "trailing"],
)
async def test_the_guard_reads_a_body_as_the_sdk_does(
    tools: httpx2.AsyncClient, minter: Minter, redis_url: str, body: bytes
) -> None:
    """What the SDK's parser refuses, the guard refuses and records; json.loads takes the
    first two, so they would pass the guard's checks and reach the SDK unrecorded."""
    token = minter.token(sub="differ")
    reply = await _raw_post(tools, token, body)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == -32700
    event = await wait_for_event(redis_url, "request.invalid", principal="differ")
    assert (event.details["reason"], event.outcome) == ("parse_error", "failure")


async def test_duplicate_keys_are_read_as_the_sdk_reads_them(
    tools: httpx2.AsyncClient, minter: Minter, redis_url: str
) -> None:
    """A call naming two tools in one object: RBAC checks the one the SDK would run."""
    token = minter.token(sub="twofaced")  # weather:read, not files:write
    body = (
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_weather",'
        b' "arguments": {"path": "x.txt"}, "name": "delete_file"}}'
    )
    reply = await _raw_post(tools, token, body)
    assert reply.status_code == 403
    event = await wait_for_event(redis_url, "authz.denied", principal="twofaced")
    assert event.tool == "delete_file"


async def test_an_oversized_body_or_batch_is_refused_unread_and_audited(
    make_settings: Callable[..., Settings], minter: Minter, redis_url: str
) -> None:
    async with serve(create_app(make_settings(max_body_bytes=4096))) as client:
        token = minter.token(sub="stuffer")
        huge = await _raw_post(client, token, b'{"x": "' + b"a" * 5000 + b'"}')
        batch = await post(client, token, [rpc("ping", {}, i) for i in range(33)])
    assert huge.status_code == 413
    assert batch.status_code == 400 and "batch" in batch.json()["error"]["message"]
    too_large = await wait_for_event(redis_url, "request.invalid", reason="too_large")
    too_many = await wait_for_event(redis_url, "request.invalid", reason="batch")
    assert too_large.principal == too_many.principal == "stuffer"


def test_a_token_whose_principal_changes_gets_a_new_plan(
    make_settings: Callable[..., Settings],
) -> None:
    """The guard remembers what it derives from a token (limits, keys, session user) by
    the token's hash, but only for the Principal it derived it from: an API key whose
    roles changed in `keys` is limited by its new roles once its check is renewed."""
    settings = make_settings()
    plans = Plans(settings.resource_uri, settings.rate_limits)
    token = "mcp_" + "k" * 40
    first = Principal(subject="svc", issuer="https://keys.test", audience="https://tools.test/mcp",
                      scopes=frozenset({"weather:read"}), token_id="key-1",
                      expires_at=time.time() + 60, not_before=0, roles=("guest",))  # fmt: skip
    again = plans.get(first, token)
    assert plans.get(first, token) is again  # cached while the principal is the same
    promoted = dataclasses.replace(first, roles=("admin",))
    plan = plans.get(promoted, token)
    assert plan.principal is promoted and plan.capacity > again.capacity
    assert plan.denylist_key == ""  # API keys are revoked in keys, not on the denylist
    assert plan.user.access_token.token == token_fingerprint(token)
    assert token not in repr(plan.user.access_token)
