"""The security report: counts over a time range, the top principals and addresses, and
the alerts of `alerts.py`, each with its evidence (at most 50 per rule).

Runs on a read snapshot of the store (blocking: call from a thread).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from bastion_audit.alerts import Thresholds, Window, find_alerts
from bastion_audit.store import AuditStore

__all__ = ["RANGES", "Range", "Thresholds", "build_report"]

Range = Literal["1h", "24h", "7d"]
RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
_TOP = 10
_MAX_PER_RULE = 50
_FAILED_AUTHN = ("authn.failed", "apikey.presentation_failed")


def _counts(w: Window) -> dict[str, Any]:
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


def _top(w: Window, column: str) -> list[dict[str, Any]]:
    return [
        {column: value, "events": n, "failures": failures}
        for value, n, failures in w.rows(
            f"SELECT {column}, COUNT(*), SUM(outcome != 'success') FROM trusted_events"  # noqa: S608
            f" WHERE ts >= ? AND ts < ? AND {column} IS NOT NULL"
            f" GROUP BY {column} ORDER BY 2 DESC, 1 LIMIT ?",
            _TOP,
        )
    ]


def build_report(
    store: AuditStore, range_: str, thresholds: Thresholds, *, now: datetime | None = None
) -> dict[str, Any]:
    until_dt = now or datetime.now(UTC)
    since_dt = until_dt - RANGES[range_]
    since, until = int(since_dt.timestamp() * 1000), int(until_dt.timestamp() * 1000)
    with store.reader() as db:
        w = Window(db, since, until)
        counts = _counts(w)
        alerts = find_alerts(w, thresholds)
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
