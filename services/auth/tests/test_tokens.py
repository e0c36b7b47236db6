from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from services.auth.tests.helpers import AUDIT, KEYS, TOOLS, Harness, harness, make_settings


@pytest.mark.anyio
async def test_refresh_rotates_and_keeps_resource_and_scopes(h: Harness) -> None:
    first = await h.tokens(scope="files:read weather:read")
    response = await h.refresh(first["client_id"], first["refresh_token"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == "files:read weather:read"
    record = await h.ctx.tokens.access_record(second["access_token"])
    assert record is not None and record["aud"] == TOOLS
    events = await h.events("token.refreshed")
    assert events[0]["principal"] == "admin"


@pytest.mark.anyio
async def test_refresh_may_narrow_but_never_widen_scopes(h: Harness) -> None:
    first = await h.tokens(scope="files:read weather:read")
    wider = await h.refresh(
        first["client_id"], first["refresh_token"], scope="files:read files:delete"
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    narrower = await h.refresh(first["client_id"], first["refresh_token"], scope="weather:read")
    assert narrower.status_code == 200 and narrower.json()["scope"] == "weather:read"


@pytest.mark.anyio
async def test_refresh_for_another_resource_is_refused(h: Harness) -> None:
    first = await h.tokens()
    response = await h.refresh(first["client_id"], first["refresh_token"], resource=AUDIT)
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"


@pytest.mark.anyio
async def test_refresh_token_reuse_after_the_grace_window_revokes_the_family(
    redis_url: str, tmp_path: Path
) -> None:
    async with harness(make_settings(redis_url, tmp_path, refresh_grace_seconds=0)) as h:
        first = await h.tokens()
        second = (await h.refresh(first["client_id"], first["refresh_token"])).json()
        await anyio.sleep(0.01)
        reuse = await h.refresh(first["client_id"], first["refresh_token"])
        assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
        events = await h.events("token.refresh_reuse")
        assert events[0]["outcome"] == "denied" and events[0]["details"]["revoked_count"] == 2
        # The legitimate holder of the newest token is signed out too.
        after = await h.refresh(first["client_id"], second["refresh_token"])
        assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
        for token in (first["access_token"], second["access_token"]):
            record = await h.ctx.tokens.access_record(token)
            assert record is not None and await h.ctx.tokens.is_denied(record["jti"])


@pytest.mark.anyio
async def test_concurrent_refresh_in_the_grace_window_gets_the_same_pair(h: Harness) -> None:
    first = await h.tokens()
    results = []

    async def refresh() -> None:
        results.append(await h.refresh(first["client_id"], first["refresh_token"]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(refresh)
        tg.start_soon(refresh)
    assert [r.status_code for r in results] == [200, 200]
    assert results[0].json() == results[1].json()
    newest = await h.refresh(first["client_id"], results[0].json()["refresh_token"])
    assert newest.status_code == 200


@pytest.mark.anyio
async def test_another_client_cannot_use_or_burn_a_refresh_token(h: Harness) -> None:
    first = await h.tokens()
    other = await h.register()
    stolen = await h.refresh(other, first["refresh_token"])
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert (await h.refresh(first["client_id"], first["refresh_token"])).status_code == 200


@pytest.mark.anyio
async def test_unknown_client_at_the_token_endpoint_gets_401_invalid_client(h: Harness) -> None:
    response = await h.refresh("gone-client", "whatever")
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert "traceback" not in response.text.lower()


@pytest.mark.anyio
async def test_unsupported_grant_type_is_refused(h: Harness) -> None:
    client_id = await h.register()
    response = await h.client.post(
        "/token", data={"grant_type": "password", "client_id": client_id}
    )
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"


@pytest.mark.anyio
async def test_repeated_parameters_are_refused(h: Harness) -> None:
    client_id = await h.register()
    response = await h.client.post(
        "/token",
        content=f"grant_type=refresh_token&grant_type=refresh_token&client_id={client_id}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


@pytest.mark.anyio
async def test_bastion_tools_gets_service_tokens_per_resource(h: Harness) -> None:
    from services.auth.tests.helpers import ADMIN, TOOLS_SECRET

    for resource, scope in ((ADMIN, "admin:users"), (AUDIT, "metrics:view"), (KEYS, "")):
        response = await h.client.post(
            "/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "bastion-tools",
                "client_secret": TOOLS_SECRET,
                "resource": resource,
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["scope"] == scope
        record = await h.ctx.tokens.access_record(response.json()["access_token"])
        assert record is not None
        assert (
            record["sub"] == "bastion-tools" and record["roles"] == [] and record["aud"] == resource
        )
    principal = await h.ctx.admin_validator.validate(
        (
            await h.client.post(
                "/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "bastion-tools",
                    "client_secret": TOOLS_SECRET,
                    "resource": ADMIN,
                },
            )
        ).json()["access_token"]
    )
    assert principal.has("admin:users") and principal.client_id == "bastion-tools"


@pytest.mark.anyio
async def test_client_credentials_with_a_wrong_secret_or_resource_is_refused(h: Harness) -> None:
    from services.auth.tests.helpers import TOOLS_SECRET

    bad = await h.client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "bastion-tools",
            "client_secret": "wrong-" + TOOLS_SECRET,
            "resource": AUDIT,
        },
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    tools = await h.client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "bastion-tools",
            "client_secret": TOOLS_SECRET,
            "resource": TOOLS,
        },
    )
    assert tools.status_code == 400 and tools.json()["error"] == "invalid_target"
    public = await h.register()
    refused = await h.client.post(
        "/token", data={"grant_type": "client_credentials", "client_id": public, "resource": AUDIT}
    )
    assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"
    events = await h.events("oauth.request_failed", 3)
    assert {e["details"]["error"] for e in events} >= {"invalid_client", "invalid_target"}


@pytest.mark.anyio
async def test_access_token_lifetime_is_thirty_minutes(h: Harness) -> None:
    body = await h.tokens()
    assert body["expires_in"] == 1800
    record = await h.ctx.tokens.access_record(body["access_token"])
    assert record is not None and abs(record["exp"] - time.time() - 1800) < 5
