"""The report's alert rules, each with its evidence (`find_alerts`).

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
from datetime import UTC, datetime
from typing import Any

from bastion_common.contracts import ARGUMENT_PATH_JSON

__all__ = ["Thresholds", "Window", "find_alerts"]

_SAMPLE = 5


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


class Window:
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


# One account however it was typed: auth records the account name trimmed and lower
# case, and older records (or another publisher) may not, so the report folds it again.
_ACCOUNT = "LOWER(TRIM(principal))"


def _brute_force(w: Window, t: Thresholds) -> list[dict[str, Any]]:
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


def _spraying(w: Window, t: Thresholds) -> list[dict[str, Any]]:
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


def _denial_burst(w: Window, t: Thresholds) -> list[dict[str, Any]]:
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


def _burst_rows(w: Window, window_ms: int, threshold: int) -> list[tuple[str, int, int, int]]:
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


def _exfiltration(w: Window, t: Thresholds) -> list[dict[str, Any]]:
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


def _refresh_reuse(w: Window) -> list[dict[str, Any]]:
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


def _token_many_ips(w: Window, t: Thresholds) -> list[dict[str, Any]]:
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


def _baseline(w: Window, t: Thresholds) -> list[dict[str, Any]]:
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


def _unauthenticated(w: Window) -> list[dict[str, Any]]:
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


def find_alerts(w: Window, t: Thresholds) -> list[dict[str, Any]]:
    """Every rule's alerts over the window, in the rules' order."""
    return [
        *_brute_force(w, t),
        *_spraying(w, t),
        *_denial_burst(w, t),
        *_exfiltration(w, t),
        *_refresh_reuse(w),
        *_token_many_ips(w, t),
        *_baseline(w, t),
        *_unauthenticated(w),
    ]
