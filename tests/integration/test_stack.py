"""The foundation: every container healthy, events travel, request ids are logged."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import httpx2

from tests.integration.conftest import SERVICES, Stack


def test_all_containers_are_healthy(stack: Stack) -> None:
    out = stack.run("ps", "--format", "json").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(rows) == 1 and isinstance(rows[0], list):  # older compose prints one JSON array
        rows = rows[0]
    health = {row["Service"]: row.get("Health") for row in rows}
    assert health == dict.fromkeys(("redis", *SERVICES, "idp", "everything", "time"), "healthy")


def test_every_service_answers_health_readiness_and_metrics(stack: Stack) -> None:
    for name, url in stack.urls.items():
        assert httpx2.get(f"{url}/healthz").json() == {"status": "ok"}, name
        ready = httpx2.get(f"{url}/readyz")
        assert ready.status_code == 200, name
        redis = ready.json()["checks"]["redis"]
        assert redis.startswith("ok (memory ") and "of 256 MiB" in redis, redis
        metrics = httpx2.get(f"{url}/metrics")
        assert "bastion_http_requests_total" in metrics.text, name


def test_service_started_events_of_all_four_services_reach_the_audit_store(stack: Stack) -> None:
    deadline = time.monotonic() + 30
    seen: set[str] = set()
    while time.monotonic() < deadline:
        out = stack.exec("audit", "python", "-m", "bastion_audit", "events", "--type",
                         "service.started")  # fmt: skip
        seen = {json.loads(line)["service"] for line in out.splitlines() if line.strip()}
        if seen >= set(SERVICES):
            break
        time.sleep(0.5)
    assert seen >= set(SERVICES)


def test_a_request_id_sent_to_a_service_appears_in_its_log_line(stack: Stack) -> None:
    request_id = f"it-{uuid.uuid4().hex}"
    response = httpx2.get(
        f"{stack.urls['keys']}/openapi.json", headers={"X-Request-ID": request_id}
    )
    assert response.headers["X-Request-ID"] == request_id
    deadline = time.monotonic() + 10
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for line in stack.logs("keys").splitlines()
            if request_id in line and line.startswith("{")
        ]
        if lines:
            break
        time.sleep(0.2)
    assert lines, "no log line carries the request id"
    assert lines[0]["request_id"] == request_id
    assert lines[0]["event"] == "http.request"
    assert lines[0]["path"] == "/openapi.json"


def test_a_forged_request_id_is_replaced_not_echoed(stack: Stack) -> None:
    response = httpx2.get(
        f"{stack.urls['auth']}/healthz", headers={"X-Request-ID": "bad id <script>" + "x" * 200}
    )
    assert "script" not in response.headers["X-Request-ID"]
    assert len(response.headers["X-Request-ID"]) == 32


def test_containers_run_hardened(stack: Stack) -> None:
    for service in SERVICES:
        cid = stack.run("ps", "-q", service).stdout.strip()
        info = json.loads(
            subprocess.run(
                ["docker", "inspect", cid], capture_output=True, text=True, check=True
            ).stdout
        )[0]
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True, service
        assert host["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        assert info["Config"]["User"] not in ("", "root", "0"), service
        bindings = [b for ports in host["PortBindings"].values() for b in ports]
        assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings), service
