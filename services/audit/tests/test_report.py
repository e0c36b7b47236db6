"""The security report: each alert rule fires on a scripted attack, with its evidence,
and stays quiet on normal traffic."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from services.audit.tests.helpers import event

from bastion_audit.report import Thresholds, build_report
from bastion_audit.store import AuditStore
from bastion_common.audit import AuditEvent

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
USERS = ("alice", "bob", "carol", "dave", "erin")


def normal_traffic(hours: int = 8) -> list[AuditEvent]:
    """A working day: logins (a typo now and then), tool calls, a few denials and rate
    limits, files read at a human pace, each token from its owner's one IP."""
    rng = random.Random(7)
    out: list[AuditEvent] = []
    for h in range(hours):
        for u, user in enumerate(USERS):
            ip = f"10.0.0.{u + 1}"
            jti = f"{user}-token-{h}"
            start = NOW - timedelta(hours=h + 1)

            def at(minute: float, _start: datetime = start) -> datetime:
                return _start + timedelta(minutes=minute)

            if rng.random() < 0.3:
                out.append(event("auth.login", "failure", principal=user, ip=ip, at=at(0)))
            out.append(event("auth.login", principal=user, ip=ip, at=at(0.5)))
            out.extend(
                event(
                    "tool.called",
                    principal=user,
                    ip=ip,
                    tool="get_weather",
                    at=at(1 + k * 1.4),
                    jti=jti,
                )
                for k in range(40)
            )
            out.extend(
                event(
                    "tool.called",
                    principal=user,
                    ip=ip,
                    tool="read_file",
                    at=at(2 + k * 7),
                    jti=jti,
                    arguments={"path": f"docs/{k}.md"},
                )
                for k in range(8)
            )
            out.append(
                event(
                    "tool.called",
                    "error",
                    principal=user,
                    ip=ip,
                    tool="read_file",
                    at=at(30),
                    jti=jti,
                )
            )
            out.append(
                event(
                    "authz.denied",
                    "denied",
                    principal=user,
                    ip=ip,
                    tool="delete_file",
                    at=at(31),
                    jti=jti,
                )
            )
            out.append(event("authn.failed", "failure", principal=None, ip=ip, at=at(40)))
            out.append(event("ratelimit.refused", "denied", principal=user, ip=ip, at=at(50)))
    return out


@pytest.fixture
def normal(store: AuditStore) -> AuditStore:
    store.add_batch(normal_traffic())
    return store


def alerts(store: AuditStore, range_: str = "1h", **thresholds: Any) -> list[dict[str, Any]]:
    report = build_report(store, range_, Thresholds(**thresholds), now=NOW)
    result: list[dict[str, Any]] = report["alerts"]
    return result


def rules(found: list[dict[str, Any]]) -> set[str]:
    return {a["rule"] for a in found}


@pytest.mark.parametrize("range_", ["1h", "24h", "7d"])
def test_normal_traffic_raises_no_alert(normal: AuditStore, range_: str) -> None:
    assert alerts(normal, range_) == []


def test_the_report_counts_what_happened(normal: AuditStore) -> None:
    report = build_report(normal, "24h", Thresholds(), now=NOW)
    counts = report["counts"]
    assert counts["permission_denials"] == 8 * 5
    assert counts["rate_limit_refusals"] == 8 * 5
    assert counts["tool_calls"] == {"success": 8 * 5 * 48, "error": 8 * 5}
    assert counts["failed_authentications"] == counts["failed_logins"] + 8 * 5
    assert {p["principal"] for p in report["top_principals"]} == set(USERS)
    assert report["top_ips"][0]["events"] >= report["top_ips"][-1]["events"]


def test_brute_force_on_one_account_fires_with_its_evidence(normal: AuditStore) -> None:
    attack = [
        event(
            "auth.login",
            "failure",
            principal="alice",
            ip=f"203.0.113.{i % 3}",
            at=NOW - timedelta(minutes=30 - i),
        )
        for i in range(25)
    ]
    normal.add_batch(attack)
    (alert,) = alerts(normal)
    assert alert["rule"] == "brute_force" and alert["principal"] == "alice"
    assert alert["evidence"]["failed_logins"] >= 25
    assert set(alert["evidence"]["ips"]) >= {"203.0.113.0", "203.0.113.1", "203.0.113.2"}
    assert set(alert["evidence"]["sample_event_ids"]) <= {e.id for e in attack} | {
        e["id"] for e in normal.query(limit=100_000)
    }


def test_brute_force_spread_over_spellings_of_one_account_still_fires(
    normal: AuditStore,
) -> None:
    """`Alice`, `ALICE`, ` alice` share one lockout in auth; kept apart, each spelling
    would stay under the threshold and the attack would raise no alert."""
    spellings = ["Alice", "ALICE", " alice", "aLiCe", "alice "]
    attack = [
        event(
            "auth.login",
            "failure",
            principal=spellings[i % len(spellings)],
            ip="203.0.113.9",
            at=NOW - timedelta(minutes=30 - i),
        )
        for i in range(25)
    ]
    normal.add_batch(attack)
    (alert,) = alerts(normal)
    assert alert["rule"] == "brute_force" and alert["principal"] == "alice"
    assert alert["evidence"]["failed_logins"] >= 25
    assert alert["evidence"]["sample_event_ids"]


def test_password_spraying_from_one_ip_fires(normal: AuditStore) -> None:
    normal.add_batch(
        [
            event(
                "auth.login",
                "failure",
                principal=f"victim{i}",
                ip="198.51.100.7",
                at=NOW - timedelta(minutes=20 - i),
            )
            for i in range(12)
        ]
    )
    (alert,) = alerts(normal)
    assert alert["rule"] == "password_spraying" and alert["ip"] == "198.51.100.7"
    assert alert["evidence"]["accounts"] == 12
    assert "password spraying" in alert["summary"]


def test_credential_stuffing_is_named_when_one_guess_succeeds(normal: AuditStore) -> None:
    normal.add_batch(
        [
            event(
                "auth.login",
                "failure",
                principal=f"victim{i}",
                ip="198.51.100.8",
                at=NOW - timedelta(minutes=20 - i),
            )
            for i in range(6)
        ]
        + [event("auth.login", principal="victim9", ip="198.51.100.8", at=NOW - timedelta(1e-3))]
    )
    (alert,) = alerts(normal)
    assert "credential stuffing" in alert["summary"]
    assert alert["evidence"]["successful_logins_from_ip"] == 1


def test_a_burst_of_denials_fires_but_the_same_number_spread_out_does_not(
    normal: AuditStore,
) -> None:
    spread = [
        event(
            "authz.denied",
            "denied",
            principal="bob",
            tool="delete_file",
            at=NOW - timedelta(hours=23) + timedelta(minutes=40 * i),
        )
        for i in range(25)
    ]
    normal.add_batch(spread)
    assert alerts(normal, "24h") == []
    burst = [
        event(
            "authz.denied",
            "denied",
            principal="bob",
            tool="delete_file",
            at=NOW - timedelta(minutes=10, seconds=-i * 5),
        )
        for i in range(25)
    ]
    normal.add_batch(burst)
    (alert,) = alerts(normal, "24h")
    assert alert["rule"] == "denial_burst" and alert["principal"] == "bob"
    assert alert["evidence"]["denials_in_window"] == 25


def test_reading_an_unusual_volume_of_files_fires(normal: AuditStore) -> None:
    normal.add_batch(
        [
            event(
                "tool.called",
                principal="dave",
                ip="10.0.0.4",
                tool="read_file",
                at=NOW - timedelta(minutes=30, seconds=-i),
                arguments={"path": f"hr/{i}.csv"},
            )
            for i in range(150)
        ]
    )
    found = alerts(normal)
    exfil = [a for a in found if a["rule"] == "file_exfiltration"]
    assert len(exfil) == 1 and exfil[0]["principal"] == "dave"
    assert exfil[0]["evidence"]["file_reads"] >= 150
    assert exfil[0]["evidence"]["distinct_paths"] >= 150
    assert rules(found) <= {"file_exfiltration", "baseline_rise"}


def test_refresh_token_reuse_fires(normal: AuditStore) -> None:
    reuse = event(
        "token.refresh_reuse",
        "denied",
        principal="erin",
        ip="192.0.2.50",
        at=NOW - timedelta(minutes=5),
        family="fam-1",
    )
    normal.add_batch([reuse])
    (alert,) = alerts(normal)
    assert alert["rule"] == "refresh_token_reuse" and alert["principal"] == "erin"
    assert alert["evidence"]["event_id"] == reuse.id
    assert alert["evidence"]["ip"] == "192.0.2.50"


def test_one_token_used_from_many_ips_fires(normal: AuditStore) -> None:
    normal.add_batch(
        [
            event(
                "tool.called",
                principal="carol",
                ip=f"192.0.2.{i}",
                tool="get_weather",
                at=NOW - timedelta(minutes=15 - i),
                jti="carol-stolen",
            )
            for i in range(4)
        ]
    )
    (alert,) = alerts(normal)
    assert alert["rule"] == "token_many_ips" and alert["evidence"]["token_id"] == "carol-stolen"
    assert alert["evidence"]["distinct_ips"] == 4


def test_a_sudden_rise_against_the_principals_own_baseline_fires(normal: AuditStore) -> None:
    normal.add_batch(
        [
            event(
                "tool.called",
                principal="alice",
                ip="10.0.0.1",
                tool="get_weather",
                at=NOW - timedelta(minutes=50, seconds=-i),
                jti="alice-token-0",
            )
            for i in range(600)
        ]
    )
    (alert,) = alerts(normal)
    assert alert["rule"] == "baseline_rise" and alert["principal"] == "alice"
    assert alert["evidence"]["factor"] >= 5


def test_a_new_principal_without_history_is_left_to_the_other_rules(store: AuditStore) -> None:
    store.add_batch(
        [
            event(
                "tool.called",
                principal="newbie",
                tool="get_weather",
                at=NOW - timedelta(minutes=30, seconds=-i),
            )
            for i in range(80)
        ]
    )
    assert alerts(store) == []


def test_a_wide_attack_is_capped_per_rule_and_the_rest_counted(store: AuditStore) -> None:
    store.add_batch(
        [
            event(
                "tool.called",
                principal=f"p{i}",
                ip=f"192.0.2.{k}",
                tool="get_weather",
                at=NOW - timedelta(minutes=10),
                jti=f"stolen-{i}",
            )
            for i in range(60)
            for k in range(3)
        ]
    )
    report = build_report(store, "1h", Thresholds(), now=NOW)
    assert len(report["alerts"]) == 50
    assert report["alerts_not_shown"] == {"token_many_ips": 10}


def test_brute_force_counts_attempts_refused_while_the_account_is_locked(
    normal: AuditStore,
) -> None:
    # auth locks an account after 5 failures and records later attempts as 'denied':
    # 5 failures + 7 refused attempts is a brute force, not noise.
    attack = [
        event(
            "auth.login",
            "failure" if i < 5 else "denied",
            principal="bob",
            ip="203.0.113.9",
            at=NOW - timedelta(minutes=20 - i),
        )
        for i in range(12)
    ]
    normal.add_batch(attack)
    (alert,) = alerts(normal)
    assert alert["rule"] == "brute_force" and alert["principal"] == "bob"
    assert alert["evidence"]["failed_logins"] >= 12
