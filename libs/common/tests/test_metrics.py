"""The lock-free metrics expose exactly what prometheus_client's own would, for the
same observations (its `_created` series aside)."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bastion_common.metrics import LoopCounter, LoopHistogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def _exposed(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return sorted(line for line in lines if "_created" not in line)


def test_a_histogram_exposes_what_prometheus_client_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = LoopHistogram("t_seconds", "latency", ["route", "method"], buckets=BUCKETS,
                         registry=ours)  # fmt: skip
    reference = Histogram("t_seconds", "latency", ["route", "method"], buckets=BUCKETS,
                          registry=theirs)  # fmt: skip
    rng = random.Random(7)
    # Values on the bounds themselves (`le` includes them), below the first, above the
    # last, and a spread between.
    values = [*BUCKETS, 0.0, 1e-9, 3.0, 1e6, *(rng.uniform(0, 3) for _ in range(500))]
    for value in values:
        labels = (rng.choice(["/mcp", "/token"]), rng.choice(["GET", "POST"]))
        fast.labels(*labels).observe(value)
        reference.labels(*labels).observe(value)
    assert _exposed(ours) == _exposed(theirs)
    assert 't_seconds_count{method="POST",route="/mcp"}' in generate_latest(ours).decode()


def test_a_histogram_without_labels_and_with_inf_given() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = LoopHistogram("b_size", "batch", buckets=(1, 2, 4, math.inf), registry=ours)
    reference = Histogram("b_size", "batch", buckets=(1, 2, 4, math.inf), registry=theirs)
    for value in (1, 1, 3, 9, 2):
        fast.labels().observe(value)
        reference.observe(value)
    assert _exposed(ours) == _exposed(theirs)


def test_a_counter_exposes_what_prometheus_client_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = LoopCounter("req_total", "requests", ["status"], registry=ours)
    reference = Counter("req_total", "requests", ["status"], registry=theirs)
    for status, amount in [("200", 1), ("404", 1), ("200", 2.5), ("500", 1), ("200", 1)]:
        fast.labels(status).inc(amount)
        reference.labels(status).inc(amount)
    assert _exposed(ours) == _exposed(theirs)
    assert 'req_total{status="200"} 4.5' in generate_latest(ours).decode()


def test_wrong_label_counts_and_negative_increments_are_refused() -> None:
    counter = LoopCounter("c_total", "c", ["a"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("x", "y")
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("x").inc(-1)
    assert counter.labels("x").value == 0


def test_a_name_taken_in_the_registry_is_refused() -> None:
    registry = CollectorRegistry()
    Counter("dup_total", "first", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounter("dup_total", "second", registry=registry)
    LoopHistogram("lat_seconds", "first", buckets=BUCKETS, registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("lat_seconds", "second", registry=registry)
