"""The audit API: every refusal attacked (status, error code, audit event), then the
events, report and verify routes for a viewer, and the metrics."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from services.audit.tests.helpers import Issuer, event

from bastion_audit.store import AuditStore, EventFilter
from bastion_common.redis import create_redis
from bastion_common.subjects import TOKENS_BEFORE, subject_key
from bastion_common.tokens import denylist_key


def _store(app: FastAPI) -> AuditStore:
    store: AuditStore = app.state.bastion.extra["store"]
    return store


async def stored(app: FastAPI, type_: str, **match: Any) -> dict[str, Any]:
    """Wait for the collector to store an event of `type_` matching `match`."""
    with anyio.fail_after(5):
        while True:
            rows = await anyio.to_thread.run_sync(
                lambda: _store(app).query(where=EventFilter(type=type_), limit=1000)
            )
            for row in rows:
                if all(row.get(k) == v or row["details"].get(k) == v for k, v in match.items()):
                    return row
            await anyio.sleep(0.02)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.anyio
async def test_a_request_without_a_token_is_refused_and_audited(
    app: FastAPI, client: httpx2.AsyncClient
) -> None:
    response = await client.get("/v1/report")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="bastion-audit"'
    row = await stored(app, "authn.failed", reason="missing_token")
    assert row["outcome"] == "failure" and row["service"] == "audit" and row["ip"]


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (
            lambda i: i.token(aud="http://localhost:8003/mcp"),
            "token is not meant for this resource",
        ),
        (lambda i: i.token(iss="https://evil.test"), "token issuer is not trusted"),
        (lambda i: i.token(lifetime=-120), "token expired"),
        (
            lambda i: i.token(key=ec.generate_private_key(ec.SECP256R1())),
            "token signature or claims are invalid",
        ),
        (lambda i: "not-a-jwt", "malformed token"),
    ],
    ids=["wrong-audience", "untrusted-issuer", "expired", "forged-signature", "garbage"],
)
@pytest.mark.anyio
async def test_a_bad_token_is_refused_with_invalid_token_and_audited(
    app: FastAPI, client: httpx2.AsyncClient, issuer: Issuer, make_token: Any, reason: str
) -> None:
    token = make_token(issuer)
    response = await client.get("/v1/events", headers=bearer(token))
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token", "error_description": reason}
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    row = await stored(app, "authn.failed", reason=reason)
    assert token not in str(row)


@pytest.mark.anyio
async def test_a_token_without_metrics_view_is_refused_with_insufficient_scope(
    app: FastAPI, client: httpx2.AsyncClient, issuer: Issuer
) -> None:
    response = await client.get(
        "/v1/report", headers=bearer(issuer.token("mallory", scope="files:read weather:read"))
    )
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert 'scope="metrics:view"' in response.headers["WWW-Authenticate"]
    row = await stored(app, "authz.denied", principal="mallory")
    assert row["outcome"] == "denied" and row["details"]["required"] == ["metrics:view"]


@pytest.mark.anyio
async def test_a_revoked_token_is_refused(
    app: FastAPI, client: httpx2.AsyncClient, issuer: Issuer, redis_url: str
) -> None:
    redis = create_redis(redis_url)
    await redis.set(denylist_key("revoked-jti"), "1", ex=300)
    await redis.aclose()
    response = await client.get("/v1/verify", headers=bearer(issuer.token(jti="revoked-jti")))
    assert response.status_code == 401
    assert response.json()["error_description"] == "token revoked"
    await stored(app, "authn.failed", reason="token revoked", principal="admin")


@pytest.mark.anyio
async def test_a_token_issued_before_its_subject_was_signed_out_is_refused(
    app: FastAPI, client: httpx2.AsyncClient, issuer: Issuer, redis_url: str
) -> None:
    token = issuer.token()
    assert (await client.get("/v1/verify", headers=bearer(token))).status_code == 200
    redis = create_redis(redis_url)
    await redis.hset(subject_key("admin"), TOKENS_BEFORE, repr(time.time()))
    await redis.aclose()
    response = await client.get("/v1/verify", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["error_description"] == "token revoked"
    await stored(app, "authn.failed", reason="subject signed out", principal="admin")


@pytest.mark.anyio
async def test_when_the_denylist_cannot_be_read_the_request_is_refused(
    client: httpx2.AsyncClient, issuer: Issuer, redis_server: Any
) -> None:
    token = issuer.token()
    assert (await client.get("/v1/verify", headers=bearer(token))).status_code == 200
    redis_server.stop()
    try:
        response = await client.get("/v1/verify", headers=bearer(token))
    finally:
        redis_server.start()
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"


@pytest.mark.anyio
async def test_events_are_filtered_and_paged_for_a_viewer(
    app: FastAPI, client: httpx2.AsyncClient, issuer: Issuer
) -> None:
    publisher = app.state.bastion.audit.publisher
    for i in range(7):
        await publisher.publish(
            event("tool.called", principal="pager", tool="read_file", n=i).model_dump_json()
        )
    await publisher.publish(
        event("auth.login", "failure", principal="pager", ip="10.6.6.6").model_dump_json()
    )
    with anyio.fail_after(5):
        while len(_store(app).query(where=EventFilter(principal="pager"))) < 8:
            await anyio.sleep(0.02)
    headers = bearer(issuer.token())
    seen: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"principal": "pager", "tool": "read_file", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/events", params=params, headers=headers)).json()
        seen += [e["details"]["n"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(7))
    failed = await client.get(
        "/v1/events", params={"outcome": "failure", "ip": "10.6.6.6"}, headers=headers
    )
    assert [e["type"] for e in failed.json()["events"]] == ["auth.login"]


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "abc"},
        {"limit": "0"},
        {"limit": "5000"},
        {"outcome": "maybe"},
        {"since": "yesterday"},
        {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
    ],
)
@pytest.mark.anyio
async def test_bad_query_parameters_get_a_clear_400(
    client: httpx2.AsyncClient, issuer: Issuer, params: dict[str, str]
) -> None:
    response = await client.get("/v1/events", params=params, headers=bearer(issuer.token()))
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request" and body["error_description"]
    for value in params.values():
        if len(value) > 3:
            assert value not in body["error_description"]


@pytest.mark.anyio
async def test_the_report_and_verify_answer_a_viewer(
    client: httpx2.AsyncClient, issuer: Issuer
) -> None:
    headers = bearer(issuer.token())
    report = await client.get("/v1/report", params={"range": "1h"}, headers=headers)
    assert report.status_code == 200
    assert report.json()["range"] == "1h"
    assert {"counts", "top_principals", "top_ips", "alerts"} <= report.json().keys()
    refused = await client.get("/v1/report", params={"range": "30d"}, headers=headers)
    assert refused.status_code == 400
    verified = await client.get("/v1/verify", headers=headers)
    assert verified.status_code == 200 and verified.json()["ok"] is True, verified.json()


@pytest.mark.anyio
async def test_metrics_show_stored_events_lag_pending_dead_letters_and_chain_head(
    app: FastAPI, client: httpx2.AsyncClient
) -> None:
    await app.state.bastion.audit.publisher.publish(event().model_dump_json())
    with anyio.fail_after(5):
        while True:
            text = (await client.get("/metrics")).text
            if "bastion_audit_chain_head_seq 0.0" not in text and "chain_head_info" in text:
                break
            await anyio.sleep(0.05)
    for name in (
        "bastion_audit_events_stored_total",
        "bastion_audit_events_in_store",
        "bastion_audit_consumer_lag",
        "bastion_audit_pending_entries",
        "bastion_audit_dead_letter_entries",
        "bastion_audit_chain_head_seq",
    ):
        assert name in text


@pytest.mark.anyio
async def test_the_service_writes_signed_checkpoints_on_its_own(
    make_settings: Any, issuer: Issuer
) -> None:
    from bastion_audit.app import create_app

    async with issuer.client() as jwks_client:
        application = create_app(make_settings(checkpoint_interval_s=0.05), http_client=jwks_client)
        async with application.router.lifespan_context(application):
            await application.state.bastion.audit.publisher.publish(event().model_dump_json())
            store = _store(application)
            signer = application.state.bastion.extra["signer"]
            with anyio.fail_after(5):
                while True:
                    result = await anyio.to_thread.run_sync(lambda: store.verify(signer))
                    if result.checkpoints and result.ok and result.head_seq >= 2:
                        break
                    await anyio.sleep(0.02)
