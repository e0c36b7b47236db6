"""The security report: counts over a time range and alerts, each with its evidence.

Rules (thresholds in `Thresholds`, configurable through AUDIT_ALERT_* settings):

- brute_force: many failed or lock-refused logins (auth.login failure/denied) against
  one account;
- password_spraying: failed logins for many accounts from one IP (credential stuffing
  when some of them succeed: the evidence counts successes from that IP);
- denial_burst: many authz.denied for one principal inside a sliding window;
- file_exfiltration: one principal reading an unusual number of files (tool.called,
  tool read_file, success);
- refresh_token_reuse: any token.refresh_reuse (auth revoked the family already);
- token_many_ips: one token (jti / token_id in details) presented from many IPs;
- baseline_rise: a principal's event count in the range against its own average over
  the preceding periods of the same length (principals with no history are left to the
  other rules);
- unauthenticated_events: events whose stream entry was not signed by the service they
  claim (`bastion_common.eventsign`), one alert per claimed service. Every other count
  and rule reads only the trusted events (the store's `trusted_events` view), so a
  forged event neither hides in the counts nor raises a false alarm of its own.

Runs on a read snapshot of the store (blocking: call from a thread).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from bastion_audit.store import AuditStore
from bastion_common.contracts import ARGUMENT_PATH_JSON

__all__ = ["RANGES", "Range", "Thresholds", "build_report"]

Range = Literal["1h", "24h", "7d"]
RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
_TOP = 10
_SAMPLE = 5
_MAX_PER_RULE = 50
_FAILED_AUTHN = ("authn.failed", "apikey.presentation_failed")


@dataclass(frozen=True)
class Thresholds:
    brute_force_failures: int = 10
    spray_accounts: int = 5
    denial_burst: int = 20
    denial_burst_window_s: int = 300
    file_reads: int = 100
    token_ips: int = 3
    baseline_factor: float = 5.0
    baseline_min_events: int = 50
    baseline_periods: int = 7


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _split(value: str | None, limit: int = 20) -> list[str]:
    """GROUP_CONCAT output as a sorted list (IP addresses never hold a comma)."""
    return sorted(set(value.split(",")))[:limit] if value else []


class _Window:
    def __init__(self, db: sqlite3.Connection, since: int, until: int) -> None:
        self.db = db
        self.since = since
        self.until = until

    def rows(self, sql: str, *args: Any) -> list[Any]:
        return self.db.execute(sql, (self.since, self.until, *args)).fetchall()

    def samples(self, column: str, value: str, type_: str, outcome: str | None = None) -> list[str]:
        sql = (
            f"SELECT event_id FROM trusted_events WHERE ts >= ? AND ts < ? AND {column} = ?"  # noqa: S608
            " AND type = ?" + (" AND outcome = ?" if outcome else "") + " ORDER BY seq LIMIT ?"
        )
        args: list[Any] = [value, type_, *([outcome] if outcome else []), _SAMPLE]
        return [r[0] for r in self.rows(sql, *args)]


def _counts(w: _Window) -> dict[str, Any]:
    by_type = {
        (t, o): n
        for t, o, n in w.rows(
            "SELECT type, outcome, COUNT(*) FROM trusted_events WHERE ts >= ? AND ts < ?"
            " GROUP BY type, outcome"
        )
    }
    total = sum(by_type.values())
    logins_failed = by_type.get(("auth.login", "failure"), 0)
    failed_authn = logins_failed + sum(n for (t, _), n in by_type.items() if t in _FAILED_AUTHN)
    tool_calls: dict[str, int] = {}
    for (t, o), n in by_type.items():
        if t == "tool.called":
            tool_calls[o] = tool_calls.get(o, 0) + n
    return {
        "events": total,
        "failed_authentications": failed_authn,
        "failed_logins": logins_failed,
        "permission_denials": sum(n for (t, _), n in by_type.items() if t == "authz.denied"),
        "rate_limit_refusals": sum(n for (t, _), n in by_type.items() if t == "ratelimit.refused"),
        "tool_calls": tool_calls,
        "invalid_tool_calls": sum(n for (t, _), n in by_type.items() if t == "tool.invalid_params"),
    }


def _top(w: _Window, column: str) -> list[dict[str, Any]]:
    return [
        {column: value, "events": n, "failures": failures}
        for value, n, failures in w.rows(
            f"SELECT {column}, COUNT(*), SUM(outcome != 'success') FROM trusted_events"  # noqa: S608
            f" WHERE ts >= ? AND ts < ? AND {column} IS NOT NULL"
            f" GROUP BY {column} ORDER BY 2 DESC, 1 LIMIT ?",
            _TOP,
        )
    ]


# One account however it was typed: auth records the account name trimmed and lower
# case, and older records (or another publisher) may not, so the report folds it again.
_ACCOUNT = "LOWER(TRIM(principal))"


def _brute_force(w: _Window, t: Thresholds) -> list[dict[str, Any]]:
    out = []
    for principal, n, ips, first, last in w.rows(
        "SELECT LOWER(TRIM(principal)), COUNT(*), GROUP_CONCAT(DISTINCT ip), MIN(ts), MAX(ts)"
        " FROM trusted_events"
        # Attempts refused while the account is locked ('denied') are attempts too: with
        # auth's lockout at 5 failures, counting failures alone would never reach 10.
        " WHERE ts >= ? AND ts < ? AND type = 'auth.login' AND outcome IN ('failure', 'denied')"
        " AND principal IS NOT NULL GROUP BY LOWER(TRIM(principal)) HAVING COUNT(*) >= ?",
        t.brute_force_failures,
    ):
        out.append(
            {
                "rule": "brute_force",
                "severity": "high",
                "summary": f"{n} failed logins for account {principal!r}",
                "principal": principal,
                "evidence": {
                    "failed_logins": n,
                    "threshold": t.brute_force_failures,
                    "ips": _split(ips),
                    "first": _iso(first),
                    "last": _iso(last),
                    "sample_event_ids": w.samples(_ACCOUNT, principal, "auth.login", "failure"),
                },
            }
        )
    return out


def _spraying(w: _Window, t: Thresholds) -> list[dict[str, Any]]:
    out = []
    for ip, accounts, n, first, last in w.rows(
        "SELECT ip, COUNT(DISTINCT LOWER(TRIM(principal))), COUNT(*), MIN(ts), MAX(ts)"
        " FROM trusted_events WHERE ts >= ? AND ts < ?"
        " AND type = 'auth.login' AND outcome = 'failure'"
        " AND ip IS NOT NULL GROUP BY ip HAVING COUNT(DISTINCT LOWER(TRIM(principal))) >= ?",
        t.spray_accounts,
    ):
        names = [
            r[0]
            for r in w.rows(
                "SELECT DISTINCT LOWER(TRIM(principal)) FROM trusted_events"
                " WHERE ts >= ? AND ts < ? AND type = 'auth.login' AND outcome = 'failure'"
                " AND ip = ? ORDER BY 1 LIMIT 20",
                ip,
            )
        ]
        (successes,) = w.rows(
            "SELECT COUNT(*) FROM trusted_events WHERE ts >= ? AND ts < ? AND type = 'auth.login'"
            " AND outcome = 'success' AND ip = ?",
            ip,
        )[0]
        kind = "credential stuffing" if successes else "password spraying"
        out.append(
            {
                "rule": "password_spraying",
                "severity": "high",
                "summary": f"{kind}: failed logins for {accounts} accounts from {ip}",
                "ip": ip,
                "evidence": {
                    "accounts": accounts,
                    "threshold": t.spray_accounts,
                    "failed_logins": n,
                    "successful_logins_from_ip": successes,
                    "account_names": names,
                    "first": _iso(first),
                    "last": _iso(last),
                    "sample_event_ids": w.samples("ip", ip, "auth.login", "failure"),
                },
            }
        )
    return out


def _denial_burst(w: _Window, t: Thresholds) -> list[dict[str, Any]]:
    window_ms = t.denial_burst_window_s * 1000
    out = []
    for principal, peak, end, total in _burst_rows(w, window_ms, t.denial_burst):
        out.append(
            {
                "rule": "denial_burst",
                "severity": "medium",
                "summary": f"{peak} permission denials for {principal!r} within "
                f"{t.denial_burst_window_s} s",
                "principal": principal,
                "evidence": {
                    "denials_in_window": peak,
                    "window_seconds": t.denial_burst_window_s,
                    "threshold": t.denial_burst,
                    "window_end": _iso(end),
                    "denials_in_range": total,
                    "sample_event_ids": w.samples("principal", principal, "authz.denied"),
                },
            }
        )
    return out


def _burst_rows(w: _Window, window_ms: int, threshold: int) -> list[tuple[str, int, int, int]]:
    """Per principal, the peak count of denials in a sliding window (window functions)."""
    rows = w.db.execute(
        "SELECT principal, c, ts, n FROM ("
        " SELECT principal, ts,"
        "  COUNT(*) OVER (PARTITION BY principal ORDER BY ts"
        "   RANGE BETWEEN ? PRECEDING AND CURRENT ROW) AS c,"
        "  COUNT(*) OVER (PARTITION BY principal) AS n"
        " FROM trusted_events WHERE ts >= ? AND ts < ? AND type = 'authz.denied'"
        " AND principal IS NOT NULL"
        ") WHERE c >= ? ORDER BY principal, c DESC, ts",
        (window_ms - 1, w.since, w.until, threshold),
    ).fetchall()
    peaks: dict[str, tuple[str, int, int, int]] = {}
    for principal, c, ts, n in rows:
        peaks.setdefault(principal, (principal, int(c), int(ts), int(n)))
    return list(peaks.values())


def _exfiltration(w: _Window, t: Thresholds) -> list[dict[str, Any]]:
    out = []
    for principal, n, paths, first, last in w.rows(
        "SELECT principal, COUNT(*),"  # noqa: S608 - the path is a constant
        f" COUNT(DISTINCT json_extract(body, '{ARGUMENT_PATH_JSON}')), MIN(ts), MAX(ts)"
        " FROM trusted_events WHERE ts >= ? AND ts < ? AND type = 'tool.called'"
        " AND tool = 'read_file' AND outcome = 'success' AND principal IS NOT NULL"
        " GROUP BY principal HAVING COUNT(*) >= ?",
        t.file_reads,
    ):
        sample_paths = [
            r[0]
            for r in w.rows(
                f"SELECT DISTINCT json_extract(body, '{ARGUMENT_PATH_JSON}') FROM trusted_events"  # noqa: S608
                " WHERE ts >= ? AND ts < ? AND type = 'tool.called' AND tool = 'read_file'"
                " AND principal = ? LIMIT 10",
                principal,
            )
            if r[0] is not None
        ]
        out.append(
            {
                "rule": "file_exfiltration",
                "severity": "high",
                "summary": f"{principal!r} read {n} files",
                "principal": principal,
                "evidence": {
                    "file_reads": n,
                    "distinct_paths": paths,
                    "threshold": t.file_reads,
                    "sample_paths": sample_paths,
                    "first": _iso(first),
                    "last": _iso(last),
                    "sample_event_ids": w.samples("principal", principal, "tool.called", "success"),
                },
            }
        )
    return out


def _refresh_reuse(w: _Window) -> list[dict[str, Any]]:
    out = []
    for event_id, ts, principal, client_id, ip, body in w.rows(
        "SELECT event_id, ts, principal, client_id, ip, body FROM trusted_events"
        " WHERE ts >= ? AND ts < ? AND type = 'token.refresh_reuse' ORDER BY seq LIMIT 100"
    ):
        details = json.loads(body).get("details", {})
        out.append(
            {
                "rule": "refresh_token_reuse",
                "severity": "high",
                "summary": f"a rotated refresh token of {principal!r} was used again",
                "principal": principal,
                "evidence": {
                    "event_id": event_id,
                    "time": _iso(ts),
                    "client_id": client_id,
                    "ip": ip,
                    "details": details,
                },
            }
        )
    return out


def _token_many_ips(w: _Window, t: Thresholds) -> list[dict[str, Any]]:
    out = []
    for token_ref, n_ips, ips, principal, n, first, last in w.rows(
        "SELECT token_ref, COUNT(DISTINCT ip), GROUP_CONCAT(DISTINCT ip), MAX(principal),"
        " COUNT(*), MIN(ts), MAX(ts) FROM trusted_events WHERE ts >= ? AND ts < ?"
        " AND token_ref IS NOT NULL AND ip IS NOT NULL"
        " GROUP BY token_ref HAVING COUNT(DISTINCT ip) >= ?",
        t.token_ips,
    ):
        out.append(
            {
                "rule": "token_many_ips",
                "severity": "high",
                "summary": f"one token of {principal!r} used from {n_ips} IPs",
                "principal": principal,
                "evidence": {
                    "token_id": token_ref,
                    "ips": _split(ips),
                    "distinct_ips": n_ips,
                    "threshold": t.token_ips,
                    "events": n,
                    "first": _iso(first),
                    "last": _iso(last),
                },
            }
        )
    return out


def _baseline(w: _Window, t: Thresholds) -> list[dict[str, Any]]:
    length = w.until - w.since
    base_since = w.since - t.baseline_periods * length
    current = dict(
        w.rows(
            "SELECT principal, COUNT(*) FROM trusted_events WHERE ts >= ? AND ts < ?"
            " AND principal IS NOT NULL GROUP BY principal HAVING COUNT(*) >= ?",
            t.baseline_min_events,
        )
    )
    if not current:
        return []
    history = dict(
        w.db.execute(
            "SELECT principal, COUNT(*) FROM trusted_events WHERE ts >= ? AND ts < ?"
            " AND principal IS NOT NULL GROUP BY principal",
            (base_since, w.since),
        ).fetchall()
    )
    out = []
    for principal, n in sorted(current.items()):
        past = history.get(principal, 0)
        if not past:
            continue  # no baseline to compare with
        average = past / t.baseline_periods
        if n >= t.baseline_factor * average:
            out.append(
                {
                    "rule": "baseline_rise",
                    "severity": "medium",
                    "summary": f"{principal!r}: {n} events, {n / average:.1f}x its usual rate",
                    "principal": principal,
                    "evidence": {
                        "events_in_range": n,
                        "baseline_average": round(average, 2),
                        "baseline_periods": t.baseline_periods,
                        "baseline_since": _iso(base_since),
                        "factor": round(n / average, 2),
                        "threshold_factor": t.baseline_factor,
                    },
                }
            )
    return out


def _unauthenticated(w: _Window) -> list[dict[str, Any]]:
    out = []
    for service, count, first, last, problem in w.rows(
        "SELECT service, COUNT(*), MIN(ts), MAX(ts),"
        " MIN(json_extract(body, '$.entry.problem')) FROM events"
        " WHERE ts >= ? AND ts < ? AND verified = 0 GROUP BY service ORDER BY COUNT(*) DESC"
    ):
        samples = [
            row[0]
            for row in w.rows(
                "SELECT event_id FROM events WHERE ts >= ? AND ts < ? AND verified = 0"
                " AND service = ? ORDER BY seq LIMIT ?",
                service,
                _SAMPLE,
            )
        ]
        out.append(
            {
                "rule": "unauthenticated_events",
                "severity": "high",
                "summary": f"{count} events claim to come from {service!r} but their stream"
                f" entries were not signed by it ({problem})",
                "service": service,
                "evidence": {
                    "events": count,
                    "first": _iso(first),
                    "last": _iso(last),
                    "sample_event_ids": samples,
                },
            }
        )
    return out


def build_report(
    store: AuditStore, range_: str, thresholds: Thresholds, *, now: datetime | None = None
) -> dict[str, Any]:
    until_dt = now or datetime.now(UTC)
    since_dt = until_dt - RANGES[range_]
    since, until = int(since_dt.timestamp() * 1000), int(until_dt.timestamp() * 1000)
    with store.reader() as db:
        w = _Window(db, since, until)
        counts = _counts(w)
        alerts = [
            *_brute_force(w, thresholds),
            *_spraying(w, thresholds),
            *_denial_burst(w, thresholds),
            *_exfiltration(w, thresholds),
            *_refresh_reuse(w),
            *_token_many_ips(w, thresholds),
            *_baseline(w, thresholds),
            *_unauthenticated(w),
        ]
        alerts, truncated = _cap(alerts)
        top_principals = _top(w, "principal")
        top_ips = _top(w, "ip")
    return {
        "range": range_,
        "since": since_dt.isoformat(),
        "until": until_dt.isoformat(),
        "counts": counts,
        "top_principals": top_principals,
        "top_ips": top_ips,
        "alerts": alerts,
        "alerts_not_shown": truncated,
    }


def _cap(alerts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """At most _MAX_PER_RULE alerts of each rule (a wide attack must not make the
    report unbounded); how many more each rule found is reported beside them."""
    kept: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for alert in alerts:
        seen[alert["rule"]] = seen.get(alert["rule"], 0) + 1
        if seen[alert["rule"]] <= _MAX_PER_RULE:
            kept.append(alert)
    return kept, {r: n - _MAX_PER_RULE for r, n in seen.items() if n > _MAX_PER_RULE}
