"""Metrics recorded on every request: prometheus_client's exposition without its locks.

prometheus_client's `Histogram.observe` takes a lock and walks the buckets in Python
(about 1 us; a tool call makes three), and `Counter.inc` takes a lock too. These keep
their values in plain lists and floats, updated in a few bytecodes (`bisect` finds the
bucket, in C). Each registers a collector with prometheus_client's registry that
exposes it as a `Histogram` (`_bucket`, `_count`, `_sum`) or a `Counter` (`_total`)
would, so /metrics and dashboards see the same series (without the `_created` ones).

No lock: update them from one thread, the event loop's, as every request path in the
services does. Reading (a /metrics scrape) happens there too.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["LoopCounter", "LoopHistogram"]

Child = TypeVar("Child")


class _Metric(Generic[Child]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> Child:
        """The series for these label values (made on first use, then a dict lookup)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = self._new_child()
        return child

    def describe(self) -> Iterator[Metric]:
        """The series' names, for the registry's check that no two collectors share one."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self._children.items()):
            self._add(family, values, child)
        yield family

    def _new_child(self) -> Child:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Any, values: tuple[str, ...], child: Child) -> None:
        raise NotImplementedError


class CounterSeries:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class HistogramSeries:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount: the bucket `le` means, found in C.
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class LoopCounter(_Metric[CounterSeries]):
    """A `prometheus_client.Counter` for the event loop's thread (name without `_total`
    or with it, as Counter takes it)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def _new_child(self) -> CounterSeries:
        return CounterSeries()

    def _family(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Any, values: tuple[str, ...], child: CounterSeries) -> None:
        family.add_metric(values, child.value)


class LoopHistogram(_Metric[HistogramSeries]):
    """A `prometheus_client.Histogram` for the event loop's thread."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        bounds = sorted(float(bound) for bound in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        self._le = tuple(floatToGoString(bound) for bound in bounds)  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramSeries:
        return HistogramSeries(self._bounds)

    def _family(self) -> Metric:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Any, values: tuple[str, ...], child: HistogramSeries) -> None:
        cumulative, buckets = 0, []
        for le, count in zip(self._le, list(child.counts), strict=True):
            cumulative += count
            buckets.append((le, float(cumulative)))
        family.add_metric(values, buckets, child.sum)
