"""The harness's arithmetic: wrk's line parsed, and percentiles merged over wrk runs."""

from __future__ import annotations

import json

from bench.harness import (
    MODERN_HEADERS,
    MODERN_WEATHER_CALL,
    QUANTILE_GRID,
    mcp_headers,
    median,
    merge_latency,
    parse_wrk,
)
from mcp.shared.inbound import InboundModernRoute, classify_inbound_request


def grid_of(values: list[float]) -> list[float]:
    """What wrk's QUANTILE_GRID percentiles of these latencies would be."""
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] for q in QUANTILE_GRID]


def test_wrk_line_becomes_calls_per_second_and_milliseconds() -> None:
    line = json.dumps({"requests": 5000, "duration_us": 2_000_000, "errors": 1, "non2xx": 2,
                       "p50_us": 1500, "p95_us": 4000, "p99_us": 9000, "max_us": 12000,
                       "mean_us": 1800.4, "statuses": {"429": 2, "200": 4998}})  # fmt: skip
    run = parse_wrk(line)
    assert run["calls_per_s"] == 2500.0
    assert run["errors"] == 3
    assert (run["p50_ms"], run["p95_ms"], run["p99_ms"]) == (1.5, 4.0, 9.0)
    assert run["statuses"] == {"200": 4998, "429": 2}


def test_merging_one_run_gives_back_its_percentiles() -> None:
    latencies = [float(ms) for ms in range(1, 1001)]
    run = {"requests": 1000, "quantiles_ms": grid_of(latencies)}
    p50, p95, p99 = merge_latency([run], [50, 95, 99])
    assert abs(p50 - 500) <= 5
    assert abs(p95 - 950) <= 5
    assert abs(p99 - 990) <= 5


def test_merged_percentiles_weigh_runs_by_their_requests() -> None:
    # 900 fast calls on one replica, 100 slow ones on the other: the median is fast,
    # p95 is slow. An unweighted average of the two runs' medians would say 55 ms.
    fast = {"requests": 900, "quantiles_ms": grid_of([10.0] * 900)}
    slow = {"requests": 100, "quantiles_ms": grid_of([100.0] * 100)}
    p50, p95 = merge_latency([fast, slow], [50, 95])
    assert p50 == 10.0
    assert p95 == 100.0


def test_merging_equal_runs_changes_nothing() -> None:
    latencies = [float(ms) for ms in range(1, 401)]
    run = {"requests": 400, "quantiles_ms": grid_of(latencies)}
    assert merge_latency([run, run], [50, 95, 99]) == merge_latency([run], [50, 95, 99])


def test_the_modern_call_is_one_the_sdk_routes_as_2026_07_28() -> None:
    """The SDK's own classifier accepts the body with the headers the bench sends."""
    headers = {k.lower(): v for k, v in mcp_headers("t", modern=True).items()}
    route = classify_inbound_request(json.loads(MODERN_WEATHER_CALL), headers=headers)
    assert isinstance(route, InboundModernRoute), route
    assert MODERN_HEADERS["MCP-Protocol-Version"] == "2026-07-28"
    assert headers["authorization"] == "Bearer t"


def test_the_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    assert median([0.80, 0.84, 0.86, 0.90]) == 0.85
    assert median([3.0, 1.0, 2.0]) == 2.0
